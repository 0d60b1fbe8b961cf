"""Inference on every local device: the batch sharded over a 1-D ``data`` mesh of the devices, params replicated.

    parallel = DataParallel()                     # every local device (jax.local_devices())
    params = parallel.replicate(params)           # one copy per device, put once
    out = parallel.run_rows(fn, params, ids)      # rows padded to a multiple of the devices, sharded, unpadded

Each device runs the same compiled program on its own rows, so a batch of ``n x devices`` rows takes about the time
of ``n`` rows on one device, and every row's numbers are those of one device (the per-row computation is the same;
only float rounding of the batch's shape may differ, within 1e-5). The batch planners give every batch rows of one
length bucket and a row count that is a multiple of the devices (``plan_batches(row_multiple=...)``), so every
device gets rows of the same bucket. Params prepared on a mesh remember it: :meth:`DataParallel.of` finds the
devices a tree was replicated on, so the scoring and decoding libraries need no device argument.

Params are always replicated: each device needs the whole model (Ankh Large: 7.5 GB in float32) plus a batch's
activations. Sharding the params over a model axis, for devices too small for that, is not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ankh_jax.data.tokenizer import EOS_ID


class DataParallel:
    """A 1-D ``data`` mesh over ``devices`` (default every local device of this process)."""

    def __init__(self, devices: Sequence | None = None):
        import jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        self.devices = list(jax.local_devices() if devices is None else devices)
        if not self.devices:
            raise ValueError("DataParallel needs at least one device")
        self.mesh = Mesh(np.array(self.devices), ("data",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self._rows = {}

    @classmethod
    def using(cls, num_devices: int | None = None) -> DataParallel:
        """The first ``num_devices`` local devices (None: all of them); a count above what exists is refused."""
        import jax

        devices = jax.local_devices()
        if num_devices is None:
            return cls(devices)
        if not 1 <= num_devices <= len(devices):
            from ankh_jax.errors import InputError

            raise InputError(f"--num_devices={num_devices}: this process has {len(devices)} local devices "
                             f"({devices[0].platform})")
        return cls(devices[:num_devices])

    @classmethod
    def of(cls, tree) -> DataParallel:
        """Where ``tree``'s arrays are: the mesh :meth:`replicate` put them on; one device for arrays on one device;
        every local device for host arrays. Arrays laid out over several devices some other way (a training mesh
        with its logical axis rules) get :class:`AsPlaced`: the rows are left to jit and that layout."""
        import jax
        from jax.sharding import NamedSharding

        leaves = jax.tree_util.tree_leaves(tree)
        sharding = getattr(leaves[0], "sharding", None) if leaves else None
        if isinstance(sharding, NamedSharding) and sharding.mesh.axis_names == ("data",):
            return cls(list(sharding.mesh.devices.flat))
        if sharding is not None and len(sharding.device_set) == 1:
            return cls(list(sharding.device_set))
        if sharding is not None:
            return AsPlaced()
        return cls()

    @property
    def size(self) -> int:
        return len(self.devices)

    def describe(self) -> str:
        return f"{self.size} x {self.devices[0].platform} ({self.devices[0].device_kind})"

    def rows_sharding(self, ndim: int):
        from jax.sharding import NamedSharding, PartitionSpec

        if ndim not in self._rows:
            self._rows[ndim] = NamedSharding(self.mesh, PartitionSpec("data", *([None] * (ndim - 1))))
        return self._rows[ndim]

    def round_rows(self, rows: int) -> int:
        """``rows`` rounded up to a multiple of the devices."""
        return -(-rows // self.size) * self.size

    def replicate(self, tree):
        """``tree`` with one copy on every device (put once; reuse the result)."""
        import jax

        return jax.device_put(tree, self.replicated)

    def shard_rows(self, array: np.ndarray):
        """``array`` (rows a multiple of the devices) split by rows over the devices."""
        import jax

        return jax.device_put(array, self.rows_sharding(np.ndim(array)))

    def run_rows(self, fn, params, *row_arrays: np.ndarray, pad_row: np.ndarray | None = None):
        """``fn(params, *row_arrays)`` with the rows padded to a multiple of the devices and sharded; returns the
        result (an array or a tuple of arrays, rows first) as numpy, cut back to the real rows. Padding rows copy
        ``pad_row`` of the first array (default: a lone ``</s>``) and the first row of the others."""
        import jax

        n = row_arrays[0].shape[0]
        total = self.round_rows(n)
        padded = []
        for k, array in enumerate(row_arrays):
            if total > n:
                if k == 0:
                    fill = np.zeros((total - n,) + array.shape[1:], array.dtype)
                    if pad_row is None:
                        fill[:, 0] = EOS_ID
                    else:
                        fill[:] = pad_row
                else:
                    fill = np.repeat(array[:1], total - n, axis=0)
                array = np.concatenate([array, fill])
            padded.append(self.shard_rows(array))
        out = fn(params, *padded)
        return jax.tree_util.tree_map(lambda x: np.array(x)[:n], out)  # a writable copy


class AsPlaced(DataParallel):
    """No data mesh: host arrays go to jit as they are, for params another layout already placed."""

    def __init__(self):
        import jax

        self.devices = [jax.local_devices()[0]]

    def round_rows(self, rows: int) -> int:
        return rows

    def shard_rows(self, array: np.ndarray):
        return array

    def rows_sharding(self, ndim: int):
        return None


class DeviceActivity:
    """The devices' busy time, from the dispatched results: a thread waits for each result in dispatch order and
    counts a batch busy from ``max(its dispatch, the previous result ready)`` until it is ready. What is left of a
    run's wall time is the devices' idle share (compiling, reading, tokenizing, writing while nothing runs)."""

    def __init__(self):
        import queue
        import threading

        self.busy_seconds = 0.0
        self.batches = 0
        self.error: Exception | None = None
        self._last_ready: float | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._watch, name="device-activity", daemon=True)
        self._thread.start()

    def dispatched(self, result) -> None:
        import time

        self._queue.put((time.perf_counter(), result))

    def _watch(self) -> None:
        import time

        import jax

        while (item := self._queue.get()) is not None:
            dispatched, result = item
            del item
            try:
                jax.block_until_ready(result)
            except Exception as err:  # noqa: BLE001  the consumer sees the same error when it reads the result
                self.error = err
            del result
            ready = time.perf_counter()
            self.busy_seconds += ready - max(dispatched, self._last_ready or dispatched)
            self._last_ready = ready
            self.batches += 1

    def close(self) -> float:
        """Waits for the results dispatched so far; returns the busy seconds."""
        self._queue.put(None)
        self._thread.join()
        return self.busy_seconds


def prefetch(iterable, depth: int = 1):
    """Iterates ``iterable`` in a background thread, ``depth`` items ahead (its work, e.g. reading and tokenizing
    the next window of a FASTA, then overlaps the consumer's); an exception is raised where its item would be."""
    import queue
    import threading

    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def produce():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        items.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as err:  # noqa: BLE001  handed to the consumer, raised there
            items.put((end, err))
            return
        items.put((end, None))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = items.get()
            if err is not None:
                raise err
            if item is end:
                return
            yield item
    finally:
        stop.set()

