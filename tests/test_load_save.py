"""Loading and saving HF model directories: sharded files, tokenizer files, bad inputs."""
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from empg_jax.models import (CheckpointError, ModelConfig, load_pretrained, load_tokenizer,
                             save_pretrained, turn_end_token_ids,
                             response_end_token_id, pad_token_id)
from empg_jax.models.safetensors_io import INDEX_FILE, parse_size, plan_shards
from helpers_hf import make_tiny_hf_model, make_tiny_tokenizer


@pytest.fixture(scope='module')
def llama_dir(tmp_path_factory):
  """A tiny untied Llama 3 directory with a tokenizer, and its torch model."""
  model_dir, torch_model = make_tiny_hf_model(tmp_path_factory.mktemp('hf'), 'llama3',
                                              num_hidden_layers=1)
  make_tiny_tokenizer(model_dir, style='llama3')
  return model_dir, torch_model


def copy_dir(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def logits(model, ids):
  return np.asarray(model(jnp.asarray(ids)))


def torch_logits(torch_model, ids):
  with torch.no_grad():
    return torch_model(torch.tensor(ids, dtype=torch.long)).logits.numpy()


IDS = np.arange(12, dtype=np.int32).reshape(1, 12) * 7 % 300


def test_loads_transformers_sharded_checkpoint(tmp_path):
  model_dir, torch_model = make_tiny_hf_model(tmp_path, 'qwen2', max_shard_size='60KB')
  shards = [f for f in os.listdir(model_dir) if f.endswith('.safetensors')]
  assert len(shards) > 2 and os.path.isfile(os.path.join(model_dir, INDEX_FILE))
  model = load_pretrained(model_dir)
  np.testing.assert_allclose(logits(model, IDS), torch_logits(torch_model, IDS), atol=1e-4)


def test_save_writes_sharded_files_with_index_and_tokenizer(llama_dir, tmp_path):
  model_dir, torch_model = llama_dir
  model = load_pretrained(model_dir)
  out = tmp_path / 'out'
  save_pretrained(model, out, max_shard_size='50KB')
  files = sorted(os.listdir(out))
  shards = [f for f in files if f.endswith('.safetensors')]
  assert len(shards) > 2 and shards[0] == f'model-00001-of-{len(shards):05d}.safetensors'
  with open(out / INDEX_FILE) as f:
    index = json.load(f)
  assert set(index['weight_map'].values()) == set(shards)
  assert 'lm_head.weight' in index['weight_map']  # untied head is written
  for fname in ('tokenizer.json', 'tokenizer_config.json', 'generation_config.json'):
    assert fname in files
  np.testing.assert_array_equal(logits(load_pretrained(out), IDS), logits(model, IDS))
  # Saving again into the same directory, unsharded, leaves no stale shard behind.
  save_pretrained(model, out)
  assert sorted(f for f in os.listdir(out) if 'safetensors' in f) == ['model.safetensors']
  np.testing.assert_array_equal(logits(load_pretrained(out), IDS), logits(model, IDS))


def test_tied_model_saves_no_lm_head_and_bf16_dtype(tmp_path):
  model_dir, _ = make_tiny_hf_model(tmp_path, 'qwen3', num_hidden_layers=1)
  model = load_pretrained(model_dir, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  save_pretrained(model, tmp_path / 'out')
  tensors = load_file(str(tmp_path / 'out' / 'model.safetensors'))
  assert 'lm_head.weight' not in tensors
  assert tensors['model.embed_tokens.weight'].dtype.name == 'bfloat16'
  with open(tmp_path / 'out' / 'config.json') as f:
    assert json.load(f)['torch_dtype'] == 'bfloat16'


def test_config_round_trips_through_hf_json(llama_dir):
  model_dir, _ = llama_dir
  config = ModelConfig.from_hf_config(model_dir)
  assert ModelConfig.from_hf_config(config.to_hf_config()) == config
  with open(os.path.join(model_dir, 'config.json')) as f:
    assert ModelConfig.from_hf_config(json.load(f)) == config


def test_transformers4_style_config_is_read():
  config = ModelConfig.from_hf_config({
      'architectures': ['LlamaForCausalLM'], 'vocab_size': 128, 'hidden_size': 64,
      'intermediate_size': 96, 'num_hidden_layers': 1, 'num_attention_heads': 4,
      'num_key_value_heads': 2, 'rope_theta': 500000.0,
      'rope_scaling': {'type': 'llama3', 'factor': 32.0, 'low_freq_factor': 1.0,
                       'high_freq_factor': 4.0, 'original_max_position_embeddings': 8192},
      'eos_token_id': [128001, 128009]})
  assert config.rope_theta == 500000.0 and config.rope_type == 'llama3'
  assert config.rope_factor == 32.0 and config.eos_token_id == (128001, 128009)
  assert config.head_dim == 16


def test_missing_config_is_named(llama_dir, tmp_path):
  broken = copy_dir(llama_dir[0], tmp_path / 'm')
  os.remove(os.path.join(broken, 'config.json'))
  with pytest.raises(FileNotFoundError, match='config.json'):
    load_pretrained(broken)


def test_missing_directory_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    load_pretrained(tmp_path / 'nope')


def test_missing_tensor_names_tensor(llama_dir, tmp_path):
  broken = copy_dir(llama_dir[0], tmp_path / 'm')
  path = os.path.join(broken, 'model.safetensors')
  tensors = load_file(path)
  del tensors['model.layers.0.mlp.up_proj.weight']
  save_file(tensors, path, metadata={'format': 'pt'})
  with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\.up_proj\.weight'.*missing"):
    load_pretrained(broken)


@pytest.mark.parametrize('keep', [0.5, 0.001])  # cut in the data; cut in the header
def test_truncated_weights_file_is_named(llama_dir, tmp_path, keep):
  broken = copy_dir(llama_dir[0], tmp_path / 'm')
  path = os.path.join(broken, 'model.safetensors')
  os.truncate(path, int(os.path.getsize(path) * keep))
  with pytest.raises(CheckpointError, match=r'm/model\.safetensors is not a readable safetensors'):
    load_pretrained(broken)


def test_wrong_shape_names_file_and_tensor(llama_dir, tmp_path):
  broken = copy_dir(llama_dir[0], tmp_path / 'm')
  path = os.path.join(broken, 'model.safetensors')
  tensors = load_file(path)
  tensors['model.norm.weight'] = np.ones((63,), np.float32)
  save_file(tensors, path, metadata={'format': 'pt'})
  with pytest.raises(CheckpointError,
                     match=r"model\.safetensors: tensor 'model\.norm\.weight' has shape \(63,\)"):
    load_pretrained(broken)


def test_missing_shard_file_is_named(tmp_path):
  model_dir, _ = make_tiny_hf_model(tmp_path, 'qwen2', num_hidden_layers=1,
                                    max_shard_size='60KB')
  shards = sorted(f for f in os.listdir(model_dir) if f.endswith('.safetensors'))
  os.remove(os.path.join(model_dir, shards[1]))
  with pytest.raises(CheckpointError, match=f'{shards[1]}.*missing'):
    load_pretrained(model_dir)


def test_pickle_only_directory_is_refused_with_reason_and_fix(llama_dir, tmp_path):
  broken = copy_dir(llama_dir[0], tmp_path / 'm')
  os.remove(os.path.join(broken, 'model.safetensors'))
  torch.save({'w': torch.zeros(2)}, os.path.join(broken, 'pytorch_model.bin'))
  with pytest.raises(CheckpointError) as err:
    load_pretrained(broken)
  message = str(err.value)
  assert 'pytorch_model.bin' in message and 'arbitrary code' in message
  assert 'safe_serialization=True' in message


def test_no_weights_at_all(llama_dir, tmp_path):
  broken = copy_dir(llama_dir[0], tmp_path / 'm')
  os.remove(os.path.join(broken, 'model.safetensors'))
  with pytest.raises(CheckpointError, match='No weights'):
    load_pretrained(broken)


def test_unknown_architecture_lists_supported(llama_dir, tmp_path):
  broken = copy_dir(llama_dir[0], tmp_path / 'm')
  cfg_path = os.path.join(broken, 'config.json')
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg['architectures'] = ['GPT2LMHeadModel']
  with open(cfg_path, 'w') as f:
    json.dump(cfg, f)
  with pytest.raises(ValueError, match='GPT2LMHeadModel.*Qwen2ForCausalLM, Qwen3ForCausalLM, '
                                       'LlamaForCausalLM'):
    load_pretrained(broken)


@pytest.mark.parametrize('change, match', [
    ({'use_sliding_window': True}, 'sliding'),
    ({'hidden_act': 'gelu'}, 'hidden_act'),
    ({'rope_scaling': {'rope_type': 'yarn', 'factor': 4.0}}, 'yarn'),
])
def test_unsupported_features_are_refused(change, match):
  base = {'architectures': ['Qwen2ForCausalLM'], 'vocab_size': 64, 'hidden_size': 32,
          'intermediate_size': 64, 'num_hidden_layers': 1, 'num_attention_heads': 2}
  with pytest.raises(ValueError, match=match):
    ModelConfig.from_hf_config({**base, **change})


def test_inconsistent_flags_are_refused():
  with pytest.raises(ValueError, match='qkv_bias'):
    ModelConfig(architecture='Qwen2ForCausalLM', vocab_size=8, hidden_size=8,
                intermediate_size=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4,
                qkv_bias=False)


def test_plan_shards_and_sizes():
  assert plan_shards([('a', 5), ('b', 5), ('c', 20), ('d', 1)], 10) == [['a', 'b'], ['c'], ['d']]
  assert parse_size('50KB') == 50_000 and parse_size('2MiB') == 2 * 2**20 and parse_size(7) == 7
  with pytest.raises(ValueError, match='Cannot parse'):
    parse_size('lots')


def test_tokenizer_helpers(llama_dir, tmp_path):
  model_dir, _ = llama_dir
  tokenizer = load_tokenizer(model_dir)
  vocab = tokenizer.get_vocab()
  assert turn_end_token_ids(tokenizer) == sorted({vocab['<|eot_id|>'], vocab['<|end_of_text|>']})
  qwen = make_tiny_tokenizer(tmp_path / 'qwen', style='qwen')
  vocab = qwen.get_vocab()
  assert turn_end_token_ids(load_tokenizer(tmp_path / 'qwen')) == sorted(
      {vocab['<|im_end|>'], vocab['<|endoftext|>']})
  # Responses end the way the chat template ends a turn, even though EOS is the
  # base-model <|end_of_text|> / <|endoftext|>.
  assert response_end_token_id(tokenizer) == tokenizer.get_vocab()['<|eot_id|>']
  assert response_end_token_id(load_tokenizer(tmp_path / 'qwen')) == vocab['<|im_end|>']
  assert pad_token_id(load_tokenizer(tmp_path / 'qwen')) == vocab['<|endoftext|>']
  # Without a pad token, padding falls back on the response-end token.
  no_pad = load_tokenizer(tmp_path / 'qwen')
  no_pad.pad_token = None
  assert pad_token_id(no_pad) == vocab['<|im_end|>']
  with pytest.raises(FileNotFoundError, match='no tokenizer files'):
    load_tokenizer(tmp_path)
