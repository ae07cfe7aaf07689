"""Transformer building blocks shared by every model in the package.

One `TransformerStack` (pre-norm blocks of causal self-attention and an MLP, then a final
norm) serves the global and local models of MEGABYTE and the baseline byte transformer.

Every parameter carries logical axis names (`nn.with_logical_partitioning`), so the mapping
onto a device mesh lives in one table of rules outside the model:

  vocab   256 byte ids           embed  model width          mlp   MLP hidden width
  heads   attention heads        kv     per-head width       (None: never sharded)

Activations are annotated with `activation_*` names the same way; without rules in scope
(`nn.logical_axis_rules`) the annotations do nothing.

Incremental decoding uses the same modules, told what to compute by a `Mode`: in PREFILL
mode the stack runs a known window from position 0 with the training kernels and fills an
empty cache (one `KVCache` per layer, from `init_stack_cache`); in DECODE mode the input
holds new positions `index ..` only, which attend to the cached keys and values; both
return the updated cache with the output. TRAIN mode (the default) takes no cache. Caches carry logical axis names too
(`CACHE_AXES`: batch, cache length, heads, per-head width), so they shard like activations
and parameters under the same rules.

Cross-patch attention (`StackSpec.cross_patch = r > 0`, MEGABYTE's Section 2.3.2): the stack
runs over whole sequences `[batch, T, dim]` cut into patches of `StackSpec.patch` positions;
each position attends causally within its patch and to the last r positions of the previous
patch, with rotary position embeddings (`apply_rotary`) on queries and keys. Its decode cache
is a ring of two patches (`cross_patch_cache_len`), so the previous patch's keys stay
available while the current patch is written.

`CausalConvEncoder` is the convolutional patch encoder of Section 2.3.1.

Layout (data flow, bottom up):

  initializers   dense and embedding initialisers
  spec           StackSpec (one stack's shape and options), Mode (train / prefill / decode),
                 activation axis names
  norms          Norm / make_norm / fold_norm
  kvcache        KVCache, CACHE_AXES, init_stack_cache
  token_shift    token_shift, previous_shift_rows
  fp8            fp8_einsum (FP8 matmuls, direct per-tensor scaling), dense_einsum (a block's
                 projection, in FP8 with `StackSpec.fp8`)
  attention      CausalSelfAttention and its implementations
  local_attention, fused_decode   Pallas kernels (training patches; one-byte decoding)
  blocks         Mlp, Block, TransformerStack
  byte_io        ByteEmbed, byte_embedding, shift_right, CausalConvEncoder, ByteHead
"""

from megabyte_jax.layers.initializers import (Initializer, dense_init, embedding_init)
from megabyte_jax.layers.spec import (ACT_SEQ, Mode, StackSpec)
from megabyte_jax.layers.norms import (Norm, fold_norm, make_norm)
from megabyte_jax.layers.kvcache import (CACHE_AXES, KVCache, cross_patch_cache_len, init_stack_cache)
from megabyte_jax.layers.token_shift import (previous_shift_rows, token_shift)
from megabyte_jax.layers.fp8 import (dense_einsum, fp8_einsum)
from megabyte_jax.layers.attention import (CausalSelfAttention, ROTARY_BASE, apply_rotary, choose_attention_impl, sharded_patch_attention, short_causal_attention)
from megabyte_jax.layers.blocks import (Block, FusedStack, decoding_params, Mlp, TransformerStack, remat_policy, stack_block_params, unstack_block_params)
from megabyte_jax.layers.byte_io import (ByteEmbed, ByteHead, CausalConvEncoder, byte_embedding, shift_right)

__all__ = ['ACT_SEQ', 'Mode', 'Block', 'FusedStack', 'decoding_params', 'dense_einsum', 'ByteEmbed', 'ByteHead', 'CACHE_AXES', 'CausalConvEncoder', 'CausalSelfAttention', 'Initializer', 'KVCache', 'Mlp', 'Norm', 'ROTARY_BASE', 'StackSpec', 'TransformerStack', 'apply_rotary', 'byte_embedding', 'choose_attention_impl', 'cross_patch_cache_len', 'dense_init', 'embedding_init', 'fp8_einsum', 'fold_norm', 'init_stack_cache', 'make_norm', 'previous_shift_rows', 'remat_policy', 'sharded_patch_attention', 'shift_right', 'short_causal_attention', 'stack_block_params', 'token_shift', 'unstack_block_params']
