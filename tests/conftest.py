"""Shared fixtures: tiny random models with a word-level tokenizer, and the real Gemma 3 270M.

Tiny models (fast, any test may use them):

- ``tiny_gemma3_dir`` / ``tiny_gpt2_dir``: a directory with config, random weights and a
  word-level tokenizer (Gemma-like: it adds BOS; GPT-2-like: it does not), loadable with
  ``lensprobe.load_model(str(dir), backend=...)``.
- ``tiny_gemma3`` / ``tiny_gpt2``: ``backend -> model`` loaders (each call loads a fresh copy:
  nnsight and TransformerLens wrap the Hugging Face model in place, so backends never share one).
  Fixture models compute in float32 on every machine (``load_model``'s ``"auto"`` would pick
  bfloat16 on AMX CPUs, and the tests compare backends and paths at float32 tolerances).
- ``tiny_texts``: a few texts of different lengths in the tiny vocabulary.

Real model (tests using these are marked ``slow``): ``gemma_hf``, ``gemma_nnsight``, ``gemma_tl``,
one session-scoped Gemma 3 270M per backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_WORDS = (
    "the a cat dog bird sat ran flew on under over mat tree house big small red blue green "
    "quickly slowly and then it was very happy sad today yesterday"
).split()

TINY_TEXTS = [
    "the cat sat on the mat",
    "a dog ran",
    "the big red bird flew over the green tree and then it sat on the house",
    "cat",
    "the small blue dog was very happy today",
    "a bird sat under the tree yesterday and it was sad",
    "the dog and the cat ran quickly",
]


def _word_tokenizer(directory: Path, *, add_bos: bool) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + TINY_WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if add_bos:
        core.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tok.save_pretrained(directory)


def tiny_vocab_size() -> int:
    return 4 + len(TINY_WORDS)


FIXTURE_DATA = Path(__file__).resolve().parent / "data"
"""The real-text fixture shipped with the tests (``tests/data``, see its SOURCES.md)."""


@pytest.fixture(scope="session")
def fixture_data_dir() -> Path:
    """Small samples of six real datasets (sst2, sms_spam, geometry_of_truth/cities, banking77,
    massive_intent_en, jailbreak_classification) in their sources' file names and formats, laid
    out like the offline collection: every test may use it, on any clone."""
    return FIXTURE_DATA


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The whole offline data collection (``$LENSPROBE_DATA_DIR``, default
    ``<repo>/../shared/data``), for the few tests that check it against its CATALOG.md; they
    are skipped where it is missing. Everything else uses :func:`fixture_data_dir`."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    path = Path(os.environ.get("LENSPROBE_DATA_DIR", default))
    if not (path / "CATALOG.md").is_file():
        pytest.skip(f"offline data collection not found at {path} (set LENSPROBE_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    directory = tmp_path_factory.mktemp("tiny_gemma3")
    _word_tokenizer(directory, add_bos=True)
    config = Gemma3TextConfig(
        vocab_size=tiny_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=128,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    config.architectures = ["Gemma3ForCausalLM"]
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    directory = tmp_path_factory.mktemp("tiny_gpt2")
    _word_tokenizer(directory, add_bos=False)
    config = GPT2Config(
        vocab_size=tiny_vocab_size(),
        n_positions=64,
        n_embd=32,
        n_layer=3,
        n_head=4,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    config.architectures = ["GPT2LMHeadModel"]
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def _loader(directory: Path) -> Callable[[str], Any]:
    from lensprobe.models import load_model

    def load(backend: str = "hf") -> Any:
        return load_model(str(directory), backend=backend, dtype="float32")

    return load


@pytest.fixture(scope="session")
def tiny_gemma3(tiny_gemma3_dir: Path) -> Callable[[str], Any]:
    """``tiny_gemma3(backend)`` loads a fresh tiny random Gemma 3 for that backend."""
    return _loader(tiny_gemma3_dir)


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_gpt2_dir: Path) -> Callable[[str], Any]:
    """``tiny_gpt2(backend)`` loads a fresh tiny random GPT-2 for that backend."""
    return _loader(tiny_gpt2_dir)


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    return list(TINY_TEXTS)


def _real(backend: str) -> Any:
    from lensprobe.models import load_model

    return load_model("gemma-3-270m", backend=backend, dtype="float32")


@pytest.fixture(scope="session")
def gemma_hf() -> Any:
    """The bundled Gemma 3 270M as a plain Hugging Face model (session-wide, do not mutate)."""
    return _real("hf")


@pytest.fixture(scope="session")
def gemma_nnsight() -> Any:
    """The bundled Gemma 3 270M wrapped by nnsight (session-wide)."""
    return _real("nnsight")


@pytest.fixture(scope="session")
def gemma_tl() -> Any:
    """The bundled Gemma 3 270M as a TransformerLens TransformerBridge (session-wide)."""
    return _real("transformer_lens")
