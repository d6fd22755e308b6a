"""Offline stand-ins for the internet, for tests: a local HTTP server (``http.server`` in a thread) serving a
folder, and CIFAR-10 in its python format (``cifar-10-python.tar.gz``) built from the JPEG copy in
../shared, so that the download, checksum, cache and offline paths of ``--weights he2016:...`` and
``--data cifar10 --download`` run for real."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def serve(folder):
    """Serve ``folder`` on 127.0.0.1 (a free port); yields the base URL."""
    handler = functools.partial(_Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def cifar10_python_archive(jpeg_archive: Path, dest: Path, limit: int | None = None) -> str:
    """Write ``dest`` (cifar-10-python.tar.gz layout: cifar-10-batches-py/test_batch and batches.meta) from the
    test split of the JPEG ImageFolder archive; returns its md5."""
    from resprobe.io.data import load_dataset
    from resprobe.io.named import CIFAR10_CLASSES
    ds = load_dataset(f"imagefolder:{jpeg_archive}", "test")
    assert list(ds.classes) == CIFAR10_CLASSES
    n = len(ds) if limit is None else limit
    batch = {b"data": ds.images[:n].reshape(n, -1).numpy().astype(np.uint8),
             b"labels": ds.labels[:n].tolist(), b"batch_label": b"testing batch 1 of 1"}
    meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz", compresslevel=1) as tf:
        for name, obj in (("test_batch", batch), ("batches.meta", meta)):
            raw = pickle.dumps(obj, protocol=4)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    return hashlib.md5(dest.read_bytes()).hexdigest()
