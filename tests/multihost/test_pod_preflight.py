"""Preflight on a 2-host job: one host launched with a different binding stops both hosts (exit 2), each naming the
binding, before any step is compiled or anything written."""

import textwrap

from pod_runs import TIMEOUT, launch

DIFFERENT_ON_HOST_1 = textwrap.dedent("""
    import os, sys
    from ankh_jax.train import main
    extra = ["--gin.LoopConfig.log_every_steps=7"] if os.environ["JAX_PROCESS_ID"] == "1" else []
    sys.exit(main(sys.argv[1:] + extra + ["--preflight"]))
""")


def test_a_binding_that_differs_on_one_host_stops_every_host(tmp_path):
    model_dir = tmp_path / "run"
    job = launch(model_dir, script=DIFFERENT_ON_HOST_1)
    codes = job.wait(TIMEOUT)
    assert codes == [2, 2], job.tail()
    for i in range(2):
        log = job.log(i)
        assert "hosts 0 and 1 are configured differently: binding LoopConfig.log_every_steps differs" in log, log
    assert not model_dir.exists()
