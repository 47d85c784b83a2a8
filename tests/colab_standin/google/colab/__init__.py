"""A stand-in for Colab's ``google.colab`` package, for kernels run by the tests (the Colab twin, notebooks).

Put ``tests/colab_standin`` on a kernel's ``PYTHONPATH`` and the notebooks take their Colab branch. ``google`` is
left a namespace package (no ``google/__init__.py``) so ``google.protobuf`` and friends still import beside it.
Environment variables steer it: ``MUSCLEBOB_DRIVE_MOUNTPOINT`` (where ``drive.mount`` is pointed by the project),
``COLAB_STANDIN_REFUSE_DRIVE=1`` (the user refuses Drive access).
"""

from . import drive, output  # noqa: F401
