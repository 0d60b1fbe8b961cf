"""Output shards of a job split across hosts: names, the defaults from a JAX multi-process launch, finding a set.

Shard ``i`` of ``N`` writes ``OUT`` with ``-0000i-of-0000N`` before the extension (``emb.h5`` ->
``emb-00000-of-00002.h5``), TFRecord's and seqio's shard naming; one shard (``N = 1``) keeps ``OUT`` itself. Under a
JAX multi-process launch the defaults are the launch's own: ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, the
variables the trainer reads (``ankh_jax.training.partitioning.initialize_distributed``). Each shard is an
independent job (no collective between hosts), so a shard can run, fail and resume on its own.
"""

from __future__ import annotations

import os
import re

from ankh_jax.errors import InputError
from ankh_jax.parsing import try_int

NUM_SHARDS_ENV = "JAX_NUM_PROCESSES"
SHARD_INDEX_ENV = "JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    number = try_int(value)
    if number is None:
        raise InputError(f"{name}={value!r} is not an integer")
    return number


def resolve_shards(num_shards: int | None, shard_index: int | None) -> tuple[int, int]:
    """``(num_shards, shard_index)`` from the flags, else the JAX launch's environment, else ``(1, 0)``."""
    if num_shards is None:
        num_shards = _env_int(NUM_SHARDS_ENV) or 1
    if shard_index is None:
        shard_index = _env_int(SHARD_INDEX_ENV) if num_shards > 1 else 0
        if shard_index is None:
            raise InputError(f"--num_shards={num_shards} needs --shard_index (or {SHARD_INDEX_ENV}, set by a JAX "
                             "multi-process launch)")
    if num_shards < 1:
        raise InputError(f"--num_shards={num_shards}; must be at least 1")
    if not 0 <= shard_index < num_shards:
        raise InputError(f"--shard_index={shard_index}; must be in 0..{num_shards - 1} for --num_shards={num_shards}")
    return num_shards, shard_index


def shard_path(path: str, shard_index: int, num_shards: int) -> str:
    """``emb.h5`` -> ``emb-00000-of-00002.h5`` (``path`` itself for a single shard)."""
    if num_shards == 1:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}-{shard_index:05d}-of-{num_shards:05d}{ext}"


def find_shards(path: str) -> list[str]:
    """Every shard of ``path`` in order: ``[path]`` when ``path`` itself exists, else the complete set of
    ``ROOT-iiiii-of-NNNNN.EXT``; an incomplete set (or two sets of different sizes) is an :class:`InputError`
    naming the missing shards, and no shard at all a ``FileNotFoundError``."""
    if os.path.exists(path):
        return [path]
    root, ext = os.path.splitext(path)
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(os.path.basename(root)) + r"-(\d{5})-of-(\d{5})" + re.escape(ext) + "$")
    found: dict[int, dict[int, str]] = {}
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        m = pattern.match(name)
        if m:
            found.setdefault(int(m.group(2)), {})[int(m.group(1))] = os.path.join(directory, name)
    if not found:
        raise FileNotFoundError(f"{path}: no such file, and no shards {os.path.basename(root)}-*-of-*{ext} beside it")
    if len(found) > 1:
        raise InputError(f"{path}: shards of {len(found)} different splits ({', '.join(f'of-{n:05d}' for n in found)}) "
                         "in one folder; remove the stale ones")
    (count, shards), = found.items()
    missing = [shard_path(path, i, count) for i in range(count) if i not in shards]
    if missing:
        raise InputError(f"{path}: {len(missing)} of {count} shards missing: "
                         f"{', '.join(os.path.basename(m) for m in missing)}")
    return [shards[i] for i in range(count)]


def add_flags(p, output_ext: str = ".csv") -> None:
    """``--num_devices`` and ``--num_shards/--shard_index`` on an argparse parser (embed, score, generate);
    ``output_ext``: the extension of the command's output, named in the help."""
    p.add_argument("--num_devices", type=int, default=None,
                   help="local devices the batches are sharded over (default: all of this process's devices)")
    p.add_argument("--num_shards", type=int, default=None,
                   help="split the FASTA into N disjoint shards balanced by residues, one per host or job (default: "
                        f"JAX_NUM_PROCESSES, else 1); shard i writes OUT-0000i-of-0000N{output_ext}")
    p.add_argument("--shard_index", type=int, default=None, help="this job's shard (default: JAX_PROCESS_ID)")


def select(records: list, args, output: str) -> tuple[list[int], list, str, tuple[int, int]]:
    """``(indices in the file, records, output path, (num_shards, shard_index))`` of this job's shard (from
    ``args.num_shards``/``args.shard_index``): records balanced by residues (``data.batching.assign_shards``),
    the output named :func:`shard_path`."""
    from ankh_jax.data.batching import assign_shards

    num_shards, shard_index = resolve_shards(args.num_shards, args.shard_index)
    indices = list(range(len(records)))
    if num_shards > 1:
        shards = assign_shards([len(r.sequence) for r in records], num_shards)
        indices = [i for i in indices if shards[i] == shard_index]
    return indices, [records[i] for i in indices], shard_path(output, shard_index, num_shards), (num_shards,
                                                                                                shard_index)
