"""A Python thread state kept on each V8 isolate thread for as long as its context lives.

mini-racer hands every result back by calling into Python from the isolate's own thread (a ctypes
callback). On a thread Python does not know, each such call creates a thread state and deletes it
when the call returns, and each new thread state maps its frame stack with mmap and unmaps it
again (munmap: a TLB shoot-down on every CPU running the process). Measured with mini-racer 0.14
on CPython 3.11: 0.02-0.03 ms CPU per hook call in a tight loop, more in the router, where the
shoot-downs interrupt its other threads.

:func:`pin` (on the isolate's thread, inside a callback) takes one more ``PyGILState_Ensure`` that
is never released, so the thread state outlives the callback and later callbacks reuse it.
:func:`unpin` (after the context is closed, which joins the isolate's thread) deletes it from the
closing thread. Only on CPython versions where this was checked; elsewhere nothing is pinned.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

SUPPORTED = (
    sys.implementation.name == "cpython"
    and (3, 11) <= sys.version_info[:2] <= (3, 13)
    and os.path.isdir(
        "/proc/self/task"  # to see that the isolate's thread is gone before its state is deleted
    )
)

_capi = ctypes.PyDLL(None)  # own function objects: argtypes set here do not leak into ctypes.pythonapi
_capi.PyGILState_Ensure.restype = ctypes.c_int
_capi.PyThreadState_Get.restype = ctypes.c_void_p
_capi.PyThreadState_Clear.argtypes = [ctypes.c_void_p]
_capi.PyThreadState_Clear.restype = None
_capi.PyThreadState_Delete.argtypes = [ctypes.c_void_p]
_capi.PyThreadState_Delete.restype = None

Pin = tuple[int, int]  # (native id of the isolate's thread, its PyThreadState*)


def pin() -> Pin | None:
    """Keep the calling thread's Python thread state after the current callback (GIL held)."""
    if not SUPPORTED:
        return None
    _capi.PyGILState_Ensure()
    state = _capi.PyThreadState_Get()
    return (threading.get_native_id(), state) if state else None


def unpin(pinned: Pin | None) -> bool:
    """Delete a pinned thread state once its thread has ended; False (and kept) while it still runs."""
    if pinned is None:
        return True
    native_id, state = pinned
    if os.path.exists(f"/proc/self/task/{native_id}"):
        return False  # not joined (never seen: mini-racer joins it on close): a leak beats a crash
    _capi.PyThreadState_Clear(state)
    _capi.PyThreadState_Delete(state)
    return True
