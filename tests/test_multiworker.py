"""Training beyond one machine: ``$TF_CONFIG`` with several workers -> ``MultiWorkerMirroredStrategy``.

The second test starts two workers on localhost ports (two processes, each with
``TF_CONFIG`` naming both and two logical CPU devices), takes the strategy from
:func:`braintumor.train._strategy`, all-reduces across them and trains a small
Keras model with ``model.fit`` for three epochs (each worker reads its own shard of
every batch): both workers must end with the same weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from braintumor.config import Config
from braintumor.errors import BrainTumorError
from braintumor.train import _strategy, tf_config_workers

ROOT = Path(__file__).resolve().parent.parent


def _tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def test_tf_config_counts_the_machines(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert tf_config_workers() == 0 and _strategy(Config()) is None  # one machine, GPU_COUNT 1: no strategy
    assert tf_config_workers(_tf_config([1, 2], 0)) == 2
    assert tf_config_workers(json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
                                         "task": {"type": "chief", "index": 0}})) == 3
    assert tf_config_workers(json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}})) == 1
    with pytest.raises(BrainTumorError, match="^TF_CONFIG: not JSON"):
        tf_config_workers("{cluster: worker}")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}))
    assert _strategy(Config()) is None  # a one-machine TF_CONFIG changes nothing


WORKER = r"""
import json, os, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras

from braintumor.config import Config
from braintumor.train import _strategy

keras.utils.set_random_seed(0)  # as run_training does before asking for the strategy
strategy = _strategy(Config())
out = {"is_mwms": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
       "replicas": int(strategy.num_replicas_in_sync),
       "logical_cpus": len(tf.config.list_logical_devices("CPU")),
       "devices": list(strategy.extended.worker_devices)}
ctx_value = strategy.run(lambda: tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group + 1, tf.float32))
out["allreduce"] = float(strategy.reduce("SUM", ctx_value, axis=None))
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 4)).astype("float32")
y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], "float32")).astype("float32")
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
hist = model.fit(ds, epochs=3, verbose=0)
out["loss"] = [float(v) for v in hist.history["loss"]]
out["weights"] = [float(v) for v in np.concatenate([w.ravel() for w in model.get_weights()])]
print("RESULT " + json.dumps(out), flush=True)
"""


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_two_local_workers_train_in_sync_through_our_strategy():
    ports = _free_ports(2)
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=_tf_config(ports, index), TF_CPP_MIN_LOG_LEVEL="2",
                   CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER], env=env, cwd=str(ROOT),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
            assert p.returncode == 0 and lines, f"worker failed (exit {p.returncode}):\n{err[-3000:]}"
            results.append(json.loads(lines[-1][len("RESULT "):]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r in results:
        assert r["is_mwms"] and r["logical_cpus"] >= 2
        assert r["replicas"] == 2  # one replica per worker on CPU (GPUs: one per GPU of every worker)
        assert r["allreduce"] == 3.0  # replica ids 0 and 1 (+1), summed across the two processes
        assert r["loss"][-1] < r["loss"][0]
    assert results[0]["weights"] == pytest.approx(results[1]["weights"], abs=1e-6)  # gradients were all-reduced
