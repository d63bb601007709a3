"""A worker with one task that keeps ``LEAK_BYTES`` per call (0 = no leak).

Used by detection.py, window_cost.py and recycling.py; the broker comes from
``DETECT_BROKER_URL``, the leak size from ``DETECT_LEAK_BYTES``, and a
parent ballast (MiB touched before fork) from ``DETECT_PARENT_MB``.
"""

import hashlib
import json
import os

from celery import Celery

app = Celery("detect", broker=os.environ.get("DETECT_BROKER_URL", "redis://127.0.0.1:6379/15"))
app.conf.update(task_ignore_result=True, worker_prefetch_multiplier=4, broker_connection_retry_on_startup=True)

LEAK_BYTES = int(os.environ.get("DETECT_LEAK_BYTES", "1024"))
_kept = []
# A large parent (recycling.py): memory the main process touches before it
# forks, so every child starts with it resident (celery#4125, #4809).
_BALLAST = bytearray(int(os.environ.get("DETECT_PARENT_MB", "0")) << 20)
for _page in range(0, len(_BALLAST), 4096):
    _BALLAST[_page] = 1


@app.task(name="detect.record_event")
def record_event(i):
    # Strings of this size are untracked by gc: only RSS and the heap see them.
    if LEAK_BYTES:
        _kept.append({"id": i, "blob": "x" * max(0, LEAK_BYTES - 200)})
    return i


@app.task(name="detect.checksum")
def checksum(i):
    return hashlib.sha256(json.dumps({"i": i, "pad": "y" * 2000}).encode()).hexdigest()


@app.task(name="detect.render")
def render(i):
    return "".join("<li>%d</li>" % k for k in range(i % 200))
