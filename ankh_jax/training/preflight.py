"""``python -m ankh_jax.train ... --preflight``: everything a pod launch can get wrong, checked on every host in a
minute, without training (MaxText's preflight and ``train_compile``, Levanter's identical code on every worker).

1. Every host runs the same ankh_jax version with the same gin configuration: each posts both to jax's
   coordination service and reads every other host's; on a difference every host stops (exit 2) naming the
   binding that differs and the hosts, instead of hanging later in a collective.
2. The settings are checked, the train step is compiled for the real first batch's shapes, and the per-device
   memory plan (``compiled.memory_analysis()``) is printed.
3. MODEL_DIR is writable (probed and left as it was) and the training and validation data are readable.
"""

from __future__ import annotations

import difflib
import json

import gin
import jax

from ankh_jax.training import run_dir
from ankh_jax.training.run_dir import RunConfigError

GIB = 1024 ** 3
KEY = "ankh_jax_preflight"


def host_identity() -> dict:
    """This host's ankh_jax version and gin configuration (every binding, as parsed)."""
    from ankh_jax import __version__

    return {"version": __version__, "config": gin.config_str()}


def differences(mine: dict, theirs: dict) -> str:
    """What differs between two hosts' :func:`host_identity` s, in one line (empty when nothing does)."""
    if mine["version"] != theirs["version"]:
        return f"ankh_jax {mine['version']} vs {theirs['version']}"
    a = [line for line in mine["config"].splitlines() if line.strip() and not line.startswith("#")]
    b = [line for line in theirs["config"].splitlines() if line.strip() and not line.startswith("#")]
    changed = [line[1:].strip() for line in difflib.unified_diff(a, b, lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    if not changed:
        return ""
    names = sorted({line.split("=")[0].strip() for line in changed})
    return f"binding {names[0]} differs ({' vs '.join(changed[:2])})" + (
        f" and {len(names) - 1} more" if len(names) > 1 else "")


def check_same_everywhere(timeout_seconds: int = 300) -> int:
    """Exchanges :func:`host_identity` through the coordination service; raises :class:`RunConfigError` on every
    host if any two differ. Returns the number of hosts compared."""
    if jax.process_count() == 1:
        return 1
    from jax._src import distributed  # the client has no public accessor; orbax reaches it the same way

    client = distributed.global_state.client
    client.key_value_set(f"{KEY}/{jax.process_index()}", json.dumps(host_identity()))
    # Every host compares every host with host 0, so all reach the same verdict and all stop together.
    hosts = [json.loads(client.blocking_key_value_get(f"{KEY}/{i}", timeout_seconds * 1000))
             for i in range(jax.process_count())]
    for other in range(1, len(hosts)):
        diff = differences(hosts[0], hosts[other])
        if diff:
            raise RunConfigError(f"preflight: hosts 0 and {other} are configured differently: {diff}")
    return jax.process_count()


def memory_plan(program, local_batch: dict) -> dict:
    """Per-device bytes of the compiled train step for this batch's shapes (the global batch of every host's)."""
    import numpy as np

    p = program.partitioner
    batch = {k: jax.ShapeDtypeStruct((np.shape(v)[0] * jax.process_count(),) + np.shape(v)[1:], np.asarray(v).dtype,
                                     sharding=p.batch_sharding(np.ndim(v))) for k, v in local_batch.items()}
    key = jax.eval_shape(lambda: jax.random.key(0))
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=p.replicated())
    with p.activate():
        compiled = program.train_step.jitted.lower(program.layout.abstract_state(), batch, rng).compile()
    mem = compiled.memory_analysis()
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    return {"arguments": mem.argument_size_in_bytes, "temporaries": mem.temp_size_in_bytes, "peak": peak}


def preflight(model_dir: str) -> dict:
    """The checks of the module docstring, on this host; the report is also printed (process 0)."""
    from ankh_jax.training.loop import checked_settings, first_batch, prepare

    hosts = check_same_everywhere()
    settings = checked_settings()
    model_dir, program, _, inputs = prepare(model_dir, settings)
    local = first_batch(inputs.train, f"task {inputs.task_name!r} split 'train'")
    probed = run_dir.check_writable(model_dir)
    plan = memory_plan(program, local)
    lines = [f"preflight: {hosts} host(s) with the same ankh_jax and configuration",
             program.partitioner.describe(),
             (f"train step compiled for a global batch of {inputs.global_batch_size}: per device "
              f"{plan['arguments'] / GIB:.2f} GiB arguments (state + batch), {plan['temporaries'] / GIB:.2f} GiB "
              f"temporaries, peak {plan['peak'] / GIB:.2f} GiB"),
             f"MODEL_DIR {model_dir}: writable (probed in {probed}); training data readable"
             + ("; validation data readable" if inputs.eval_factory is not None else ""),
             "preflight passed: nothing was trained or written"]
    if jax.process_index() == 0:
        print("\n".join(lines), flush=True)
    return dict(plan, hosts=hosts)
