"""Safety: nothing is ever unpickled, remote code and network stay off unless asked, and the vector-file
and config parsers answer any input with a value or one RlsteerError (fuzzed with hypothesis)."""

from __future__ import annotations

import ast
import json
import pickle
import socket
import struct
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import rlsteer
from rlsteer.config import EvalConfig, TrainConfig, load_config
from rlsteer.errors import RlsteerError
from rlsteer.models import load_model
from rlsteer.steering import Entry, SteeringVectors
from rlsteer.steering.vectors import read_vector_file

PACKAGE = Path(rlsteer.__file__).resolve().parent

#: Fuzz cases tried per property in this session (printed at the end of the module; see the report).


# ------------------------------------------------------------------------------------- (a) no pickle


def _dotted(node: ast.expr) -> str:
    """``torch.load`` for the call target ``torch.load`` (attribute chains of names), else ""."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _pickle_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls that can unpickle: torch.load, pickle.load(s)/Unpickler, and np.load without allow_pickle=False."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib") for n in names):
                found.append((node.lineno, "imports a pickle module"))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in ("torch.load", "pickle.load", "pickle.loads", "pickle.Unpickler", "load_pickle"):
            found.append((node.lineno, name))
        if name in ("np.load", "numpy.load"):
            safe = any(k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and k.value.value is False
                       for k in node.keywords)
            if not safe:
                found.append((node.lineno, f"{name} without allow_pickle=False"))
    return found


def test_the_package_never_calls_an_unpickler():
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}: {what}"
                 for path in sorted(PACKAGE.rglob("*.py"))
                 for line, what in _pickle_calls(ast.parse(path.read_text(), str(path)))]
    assert offenders == []


def test_the_scan_catches_what_it_should():
    source = ("import numpy as np, torch\nfrom pickle import loads\ntorch.load('x')\nnp.load('a')\n"
              "np.load('b', allow_pickle=False)\nnp.load('c', allow_pickle=True)\n")
    assert [line for line, _ in _pickle_calls(ast.parse(source))] == [2, 3, 4, 6]


def test_checkpoints_resume_without_pickle(tmp_path, no_unpickling):
    from rlsteer.checkpoint import load_checkpoint, save_checkpoint
    from rlsteer.rundir import RunDir

    sv = SteeringVectors(8, layers=[0, 1])
    opt = torch.optim.Adam(sv.parameters(), lr=0.1)
    sv.parameter(("resid_post", 0)).grad = torch.ones(8)
    sv.parameter(("resid_post", 1)).grad = torch.ones(8)
    opt.step()
    path = save_checkpoint(RunDir(tmp_path), 1, sv, opt)
    assert sorted(p.name for p in path.iterdir()) == ["state.json", "state.safetensors", "vectors.safetensors"]
    json.loads((path / "state.json").read_text())  # plain JSON
    rng = torch.get_rng_state()
    fresh = SteeringVectors(8, layers=[0, 1])
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    torch.manual_seed(123)
    load_checkpoint(path, fresh, fresh_opt)
    assert torch.equal(torch.get_rng_state(), rng)  # the RNG state came back from safetensors
    assert torch.equal(fresh.parameter(("resid_post", 0)), sv.parameter(("resid_post", 0)))
    assert no_unpickling == []


# ---------------------------------------------------------------------- (b, c) remote code and network


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    """A tiny model saved with save_pretrained: a local folder spec."""
    model, tok = load_model("tiny-random-qwen3")
    folder = tmp_path_factory.mktemp("tiny-qwen3")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_local_folders_load_safetensors_only_without_remote_code(saved_folder, monkeypatch):
    import transformers

    seen: dict[str, dict] = {}
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=cls.__name__, **kwargs):
            seen[_name] = kwargs
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    load_model(str(saved_folder))
    model_kwargs, tok_kwargs = seen["AutoModelForCausalLM"], seen["AutoTokenizer"]
    assert model_kwargs["trust_remote_code"] is False and tok_kwargs["trust_remote_code"] is False
    assert model_kwargs["use_safetensors"] is True
    assert model_kwargs["local_files_only"] is True and tok_kwargs["local_files_only"] is True
    load_model(str(saved_folder), trust_remote_code=True)  # only when asked
    assert seen["AutoModelForCausalLM"]["trust_remote_code"] is True


def test_pickled_weights_are_refused(saved_folder, tmp_path, no_unpickling):
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "bin-model"
    shutil.copytree(saved_folder, folder)
    weights = folder / "model.safetensors"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(sorted(load_file(weights))))  # any pickle
    weights.unlink()
    with pytest.raises(RlsteerError, match="rlsteer reads safetensors weights only"):
        load_model(str(folder))
    assert no_unpickling == []


def test_local_loads_never_touch_the_network(saved_folder, monkeypatch):
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the code itself must not ask the hub
    load_model(str(saved_folder))
    load_model("tiny-random-llama")  # aliases read the cached tokenizer folder
    assert attempts == []


# ------------------------------------------------------------------------------------------- (d) fuzz


def _valid_file() -> bytes:
    sv = SteeringVectors(8, [Entry("resid_post", 1), Entry("steer_v", 2, head=1)], metadata={"model": "m"})
    with torch.no_grad():
        for e in sv.entries:
            sv.parameter(e).normal_()
    folder = Path(tempfile.mkdtemp())
    return sv.save(folder / "v.safetensors", template="qwen-math").read_bytes()


VALID = _valid_file()
FOLDER = Path(tempfile.mkdtemp(prefix="rlsteer-fuzz-"))


def _assert_read(data: bytes, kind: str) -> None:
    """The property: a valid set of vectors, or one RlsteerError line, quickly; never another exception."""
    path = FOLDER / f"{kind}.safetensors"
    path.write_bytes(data)
    t0 = time.perf_counter()
    try:
        vectors = SteeringVectors.load(path)
    except RlsteerError as err:
        assert "\n" not in str(err)
    else:
        assert len(vectors) > 0 and vectors.d_model > 0
        assert all(bool(torch.isfinite(v).all()) for v in vectors.vectors().values())
        assert read_vector_file(path)[1]["d_model"] == str(vectors.d_model)
    assert time.perf_counter() - t0 < 5


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_vector_file_arbitrary_bytes(data):
    _assert_read(data, "arbitrary bytes")


@FUZZ
@given(st.data())
def test_fuzz_vector_file_mutated(data):
    """Flipped bytes, truncation and spliced junk on a valid file."""
    blob = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        how = data.draw(st.sampled_from(["flip", "truncate", "insert", "header"]))
        if how == "flip":
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= data.draw(st.integers(1, 255))
        elif how == "truncate":
            blob = blob[:data.draw(st.integers(0, len(blob)))]
        elif how == "insert":
            i = data.draw(st.integers(0, len(blob)))
            blob[i:i] = data.draw(st.binary(min_size=1, max_size=16))
        elif len(blob) > 8:  # flip a byte inside the header JSON
            (n,) = struct.unpack("<Q", bytes(blob[:8]))
            i = data.draw(st.integers(8, max(8, min(len(blob), 8 + n) - 1)))
            blob[i] = data.draw(st.sampled_from(list(b'{}[]":,0123456789-eE.x ')))
        if not blob:
            break
    _assert_read(bytes(blob), "mutated files")


DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "I32": 4, "I8": 1, "U8": 1,
          "BOOL": 1, "I64": 8}
NAMES = st.one_of(st.sampled_from(["resid_post.0", "resid_post.3", "attn_out.1", "steer_v.2.1", "steer_q.2",
                                   "resid_post.01", "resid_post.-1", "full.1.0", "bogus.1", "resid_post"]),
                  st.text(max_size=12))
METADATA = st.dictionaries(st.sampled_from(["d_model", "scale", "model", "template", "format", "prefix"])
                           | st.text(max_size=8),
                           st.sampled_from(["8", "0", "-3", "4", "nan", "inf", "1e999", "abc", "", "1.5", "١"])
                           | st.text(max_size=8), max_size=5)


@FUZZ
@example({"resid_post.1": ("F8_E4M3", [4], b"\x7f")}, {}, True)  # float8 has no isfinite kernel
@example({"resid_post.1": ("F32", [], b"\x00")}, {}, True)  # a 0-d tensor
@example({"resid_post.1": ("F32", [0], b"\x00")}, {"d_model": "0"}, True)
@given(st.dictionaries(NAMES, st.tuples(st.sampled_from(sorted(DTYPES)),
                                        st.lists(st.integers(0, 9), max_size=3),
                                        st.sampled_from([b"\x00", b"\xff", b"\x01", b"\x7f"])), max_size=3),
       METADATA, st.booleans())
def test_fuzz_vector_file_random_headers(entries, metadata, consistent):
    """Well-formed safetensors layouts with random entry names, shapes, dtypes and header metadata."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    payload = b""
    for name, (dtype, shape, fill) in entries.items():
        size = DTYPES[dtype]
        for dim in shape:
            size *= dim
        if not consistent:
            size += 1
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(payload), len(payload) + size]}
        payload += fill * size
    text = json.dumps(header).encode()
    _assert_read(struct.pack("<Q", len(text)) + text + payload, "random headers")


KEYS = st.sampled_from(["model", "steering", "data", "rollout", "reward", "optim", "rl", "run", "protocol",
                        "target", "engine", "out", "name", "layers", "head", "steps", "lr", "n", "temperature",
                        "prefix", "limit", "betas", "lr_per_layer", "sites", "seeds", "step", "dtype"]) | st.text(
    max_size=6)
LEAVES = (st.none() | st.booleans() | st.integers(-3, 10 ** 6) | st.floats(allow_nan=True) | st.text(max_size=8)
          | st.sampled_from(["all", "latest", "resid_post", "2", "-1", "²", "1e-3", "float32"]))
CONFIGS = st.recursive(LEAVES, lambda children: st.lists(children, max_size=3)
                       | st.dictionaries(KEYS | st.integers(0, 5), children, max_size=4), max_leaves=12)
OVERRIDES = st.lists(st.tuples(st.lists(KEYS, min_size=1, max_size=3).map(".".join),
                               st.sampled_from(["=", "", "=="]),
                               st.text(max_size=10) | st.sampled_from(
                                   ["[1, 2", "{a: 1}", "&a [*a]", "!!python/object:os.system", "[99]", "0", "'x'",
                                    "{aime24: 4}", "1e999", "~", "- a", ": :", "\t", "9" * 5000])).map("".join),
                     max_size=4)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(TrainConfig, {"steering": {"lr_per_layer": {"²": 0.1}}}, [])  # a digit int() does not read
@example(EvalConfig, {}, ["protocol.temperature=0", "protocol.n={gsm8k: 4}"])
@given(st.sampled_from([TrainConfig, EvalConfig]), st.dictionaries(KEYS, CONFIGS, max_size=4), OVERRIDES)
def test_fuzz_config_parser(cls, source, overrides):
    t0 = time.perf_counter()
    try:
        cfg = load_config(cls, source, overrides)
    except RlsteerError as err:
        assert "\n" not in str(err)
    else:
        assert isinstance(cfg, cls)
    assert time.perf_counter() - t0 < 5
