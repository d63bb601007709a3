"""Loaded by every Python process that ``bilge run`` starts (via PYTHONPATH).

Starts the bilge agent when ``BILGE_DATA_DIR`` is set, then hands over to
any other ``sitecustomize`` module further down the path, so a user's own
sitecustomize still runs. Never raises: a broken agent must not stop the
host program from starting.
"""


def _bilge_bootstrap() -> None:
    import os
    import sys

    if os.environ.get("BILGE_DATA_DIR"):
        try:
            from bilge.agent import start_from_environment

            start_from_environment()
        except Exception as exc:  # noqa: BLE001
            sys.stderr.write("bilge: agent not started in pid %d: %s\n" % (os.getpid(), exc))

    # Chain to the next sitecustomize on the path, if any.
    here = os.path.dirname(os.path.abspath(__file__))
    module = sys.modules.pop("sitecustomize", None)
    saved = list(sys.path)
    try:
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
        import importlib

        try:
            importlib.import_module("sitecustomize")
        except ImportError:
            pass
    except Exception as exc:  # noqa: BLE001
        sys.stderr.write("bilge: the next sitecustomize failed: %s\n" % exc)
    finally:
        sys.path[:] = saved
        if "sitecustomize" not in sys.modules and module is not None:
            sys.modules["sitecustomize"] = module


_bilge_bootstrap()
