"""``google.colab.output``: records the JavaScript it is asked to run and the callbacks registered."""

scripts: list[str] = []
callbacks: dict = {}
custom_widget_manager = {"enabled": False}


def eval_js(script, ignore_result=False, timeout_sec=None):
    scripts.append(script)
    return "keep-alive installed (stand-in)"


def register_callback(function_name, callback):
    callbacks[function_name] = callback


def enable_custom_widget_manager():
    custom_widget_manager["enabled"] = True


def disable_custom_widget_manager():
    custom_widget_manager["enabled"] = False
