"""One object per backend: each name of ``BACKENDS`` has one class, chosen once per model.

Every backend is a :class:`lensprobe.backends.base.Backend` subclass in the module named after it;
``get_backend`` asks them in turn and picks the right one for a Hugging Face model, a
TransformerBridge and an nnsight model; anything else is the named ``TypeError``.
"""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

from lensprobe import backends, models
from lensprobe.backends.base import Backend
from lensprobe.errors import InputError, InputTypeError
from lensprobe.models import BACKENDS

EXPECTED = {
    "hf": "HFBackend",
    "nnsight": "NnsightBackend",
    "transformer_lens": "TransformerLensBackend",
}


def test_every_backend_name_has_exactly_one_class_in_its_own_module():
    registry = backends.registry()
    assert set(registry) == set(BACKENDS)
    for name in BACKENDS:
        module = importlib.import_module(f"lensprobe.backends.{name}")
        own = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, Backend)
            and obj.__module__ == module.__name__
        ]
        assert own == [type(registry[name])], name
        assert type(registry[name]).__name__ == EXPECTED[name]
        assert registry[name].name == name
        assert backends.backend_named(name) is registry[name]  # one object per backend


def test_each_backend_class_satisfies_the_protocol():
    abstract = {
        name
        for name, member in vars(Backend).items()
        if getattr(member, "__isabstractmethod__", False)
    }
    assert abstract >= {"handles", "hf_module", "resolve_hook", "add_reader", "add_editor"}
    orders = []
    for backend in backends.registry().values():
        cls = type(backend)
        assert not inspect.isabstract(cls), cls
        assert cls.name in BACKENDS
        assert isinstance(cls.detect_order, int)
        orders.append(cls.detect_order)
        for method in (
            "handles",
            "hf_module",
            "resolve_hook",
            "add_reader",
            "add_editor",
            "forward_tokens",
            "open_runner",
            "check_hooks",
            "weights_fingerprint",
            "context_length",
            "model_id",
            "input_device",
        ):
            assert callable(getattr(backend, method)), (cls, method)
    assert len(set(orders)) == len(orders)  # detection order is never a tie
    assert list(backends.registry()) == ["nnsight", "transformer_lens", "hf"]


def test_load_model_wraps_for_every_backend():
    assert set(models._WRAPPERS) == set(BACKENDS)


@pytest.mark.parametrize(
    "backend", ["hf", "nnsight", "transformer_lens"], ids=lambda b: f"tiny-{b}"
)
def test_get_backend_picks_the_class_of_the_model(tiny_gemma3, backend):
    model = tiny_gemma3(backend)
    chosen = backends.get_backend(model)
    assert type(chosen).__name__ == EXPECTED[backend]
    assert chosen.name == backend == backends.detect_backend(model)
    earlier = [b for b in backends.registry().values() if b.detect_order < chosen.detect_order]
    assert chosen.handles(model) and not any(b.handles(model) for b in earlier)
    # The small queries answer the same for the same checkpoint on every backend.
    assert chosen.context_length(model) == 128  # max_position_embeddings
    assert chosen.input_device(model) == torch.device("cpu")
    assert chosen.model_id(model) == backends.model_id(model, backend)
    assert set(chosen.weights_fingerprint(model)) == {"compute_dtype", "weights_sha256"}


def test_the_queries_agree_across_backends(tiny_gemma3):
    answers, prints = {}, {}
    for backend in BACKENDS:
        model = tiny_gemma3(backend)
        b = backends.get_backend(model)
        answers[backend] = (b.model_id(model), b.context_length(model))
        prints[backend] = b.weights_fingerprint(model)
    assert len(set(answers.values())) == 1, answers
    # nnsight traces the Hugging Face model as loaded (a bridge may rearrange its weights).
    assert prints["nnsight"] == prints["hf"]


@pytest.mark.parametrize("thing", [object(), "gpt2", torch.nn.Linear(2, 2)], ids=type)
def test_an_object_no_backend_understands_is_the_named_type_error(thing):
    for call in (backends.get_backend, backends.detect_backend):
        with pytest.raises(InputTypeError, match=r"cannot run a .*: pass a TransformerLens"):
            call(thing)
    with pytest.raises(InputError, match="unknown backend 'jax'"):
        backends.backend_named("jax")
