"""dlkern-patched models under torch.nn.parallel.DistributedDataParallel: two processes with the
gloo backend, started by torch's own launcher (torchrun), end with the same parameters as the
same training of the models torch wrote (tests/ddp_train.py does the training)."""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_ddp_two_processes_match_torch(tmp_path):
    out = tmp_path / "ddp.json"
    env = dict(os.environ)
    env.pop("DLKERN_BACKEND", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(HERE, "ddp_train.py"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world"] == 2
    expected_ops = {"unet": "conv", "gru_encoder": "rnn_layer", "transformer": "attention"}
    for name, result in report["models"].items():
        assert any(op.startswith(expected_ops[name]) for op in result["dlkern_ops"]), (name, result)
        assert result["replica_diff"] == 0.0, (name, result["replica_diff"])
        assert result["max_param_diff"] < 1e-4, (name, result["max_param_diff"])
        for a, b in zip(result["torch_losses"], result["dlkern_losses"]):
            assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (name, result)
