"""SFT: JSONL chat examples -> tokenized pairs -> training that fits them; launch/sft.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from empg_jax import models, sft
from empg_jax.bootstrap import write_random_model
from empg_jax.tiny_tokenizer import build_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _examples(n=24):
  rng = np.random.default_rng(0)
  out = []
  for i in range(n):
    target = int(rng.integers(2, 9))
    out.append({"messages": [
        {"role": "user", "content": f"Count to {target}. The counter is 0."},
        {"role": "assistant", "content": f"<action>add {1 + target % 2}</action>"}]})
  return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("sft_model"))
  texts = [m["content"] for ex in _examples() for m in ex["messages"]] * 5
  tok = build_tokenizer(texts, d, vocab_size=300)
  write_random_model(d, tok, hidden_size=32, intermediate_size=64, num_layers=1,
                     num_heads=2, num_kv_heads=1, max_positions=256)
  return d


def test_jsonl_errors_name_the_line(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(_examples(1)[0]) + "\n{not json\n")
  with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
    sft.read_jsonl_examples(str(bad))
  no_reply = tmp_path / "no_reply.jsonl"
  no_reply.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
  with pytest.raises(ValueError, match=r"no_reply.jsonl:1: expected"):
    sft.read_jsonl_examples(str(no_reply))


def test_tokenized_pairs_use_the_chat_template_and_end_the_turn(model_dir):
  tok = models.load_tokenizer(model_dir)
  prompts, responses = sft.tokenize_examples(_examples(2), tok)
  assert tok.decode(prompts[0]).endswith("<|im_start|>assistant\n")
  # The turn ends the way the chat template ends it (<|im_end|>), not with <|endoftext|>.
  assert tok.convert_ids_to_tokens(responses[0][-1]) == "<|im_end|>"
  assert tok.decode(responses[0][:-1]) == _examples(2)[0]["messages"][1]["content"]


def test_sft_fits_the_examples(model_dir):
  tok = models.load_tokenizer(model_dir)
  model = models.load_pretrained(model_dir)
  prompts, responses = sft.tokenize_examples(_examples(), tok)
  first = sft.sft_train(model, prompts, responses, pad_id=tok.pad_token_id, lr=1e-2, epochs=1,
                        batch_size=8, buckets=(64, 128))
  last = sft.sft_train(model, prompts, responses, pad_id=tok.pad_token_id, lr=1e-2, epochs=8,
                       batch_size=8, buckets=(64, 128))
  assert last["sft/final_loss"] < 0.5 * first["sft/final_loss"]


@pytest.mark.slow
def test_launch_sft_writes_a_loadable_model(model_dir, tmp_path):
  data = tmp_path / "data.jsonl"
  data.write_text("".join(json.dumps(e) + "\n" for e in _examples()))
  out = tmp_path / "out"
  subprocess.run([sys.executable, os.path.join(ROOT, "launch", "sft.py"),
                  f"--model_path={model_dir}", f"--data={data}", f"--out={out}",
                  "--epochs=1", "--batch_size=8", "--max_len=128"],
                 check=True, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                 capture_output=True, timeout=300)
  assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
  models.load_pretrained(str(out))


def test_launch_sft_refuses_an_expert_env_that_is_not_the_configs(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "sft.py"),
                         "--model_path=/nonexistent", f"--out={tmp_path / 'out'}",
                         "--config=configs/webshop.py:tiny", "--expert_env=alfworld"],
                        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "--expert_env=alfworld but --config is for 'webshop'" in proc.stderr


def test_window_logprobs_equal_the_full_sequence_ones_on_the_response(model_dir):
  import jax.numpy as jnp
  from empg_jax import batching, scoring
  tok = models.load_tokenizer(model_dir)
  model = models.load_pretrained(model_dir)
  prompts, responses = sft.tokenize_examples(_examples(5), tok)
  prompts[1] = prompts[1] + prompts[2]          # rows of different prompt lengths
  responses[3] = responses[3] + responses[4]    # and of different response lengths
  packed = batching.pack(prompts, responses, pad_id=models.pad_token_id(tok),
                         buckets=(64, 128), num_rows=6)   # one all-padding row
  args = (jnp.asarray(packed.input_ids), jnp.asarray(packed.attention_mask))
  full, _ = scoring.sequence_logprobs(model, *args)
  width = max(len(r) for r in responses) + 3
  window, mask = scoring.window_logprobs(model, *args, jnp.asarray(packed.loss_mask), width)
  assert mask.sum(axis=1).tolist() == [len(r) for r in responses] + [0]
  for row in range(5):
    start = len(prompts[row]) - 1
    n = len(responses[row])
    np.testing.assert_allclose(np.asarray(window[row, :n]),
                               np.asarray(full[row, start:start + n]), rtol=1e-5, atol=1e-6)


def test_prompt_loss_weight_also_fits_the_prompts(model_dir):
  import jax.numpy as jnp
  from empg_jax import batching, scoring
  tok = models.load_tokenizer(model_dir)
  prompts, responses = sft.tokenize_examples(_examples(), tok)
  packed = batching.pack(prompts, responses, pad_id=tok.pad_token_id, buckets=(64,))
  prompt_mask = packed.attention_mask[:, 1:] * (1 - packed.loss_mask)

  def prompt_nll(weight):
    model = models.load_pretrained(model_dir)
    sft.sft_train(model, prompts, responses, pad_id=tok.pad_token_id, lr=1e-2, epochs=3,
                  batch_size=8, buckets=(64,), prompt_loss_weight=weight)
    logp, _ = scoring.sequence_logprobs(model, jnp.asarray(packed.input_ids),
                                        jnp.asarray(packed.attention_mask))
    return -float((np.asarray(logp) * prompt_mask).sum() / prompt_mask.sum())

  # Trained on the responses only, the prompts' likelihood is a by-product; with the
  # prompt term it is fitted as well.
  assert prompt_nll(1.0) < 0.9 * prompt_nll(0.0)   # measured: 3.92 vs 4.90


def test_bootstrap_refuses_expert_responses_longer_than_the_sampler_budget():
  from empg_jax.bootstrap import check_response_budget
  from empg_jax.errors import ConfigError
  check_response_budget(np.array([10, 32, 7]), 32)   # the turn end may be the last token
  with pytest.raises(ConfigError) as e:
    check_response_budget(np.array([10, 33, 57, 7]), 32)
  message = str(e.value)
  assert "\n" not in message
  assert "50% of the expert's responses" in message and "longest 57 tokens" in message
  assert "--config.sampler.max_response_tokens=64" in message
