"""Layer pairs: each op has `x_forward(...) -> (out, cache)` and `x_backward(dout, cache) -> grads`
written next to each other, with the math and its derivative in the docstring."""
from .activations import GELU, gelu_erf_backward, gelu_erf_forward, gelu_output, gelu_remake, gelu_tanh_backward, gelu_tanh_forward, tanh_backward, tanh_forward
from .attention import AttentionCache, MHSACache, attention_backward, attention_forward, attention_probs, mhsa_backward, mhsa_forward, softmax_backward, softmax_forward
from .block import BlockCache, MLPCache, block_attention, block_backward, block_forward, block_qkv_forward, block_rows_forward, mlp_backward, mlp_forward
from .dropout import BatchRows, drop_path_backward, drop_path_forward, dropout_backward, dropout_forward
from .embed import cls_backward, cls_forward, insert_tokens_backward, insert_tokens_forward, patch_embed_backward, patch_embed_forward, patchify, pos_embed_backward, pos_embed_forward, sincos_2d, unpatchify
from .head import HeadCache, head_backward, head_forward
from .linear import linear_backward, linear_forward
from .loss import cross_entropy_backward, cross_entropy_forward
from .norm import (AffineCache, affine_into_linear_backward, affine_into_linear_forward,
                   affine_linear_inputs, fold_affine_backward, fold_affine_forward, layernorm_backward, layernorm_forward,
                   normalize_backward, normalize_forward)
from .scale import layer_scale_backward, layer_scale_forward

__all__ = ["GELU", "gelu_erf_backward", "gelu_erf_forward", "gelu_output", "gelu_remake", "gelu_tanh_backward",
           "gelu_tanh_forward", "tanh_backward", "tanh_forward", "AttentionCache", "MHSACache",
           "attention_backward", "attention_forward", "attention_probs", "mhsa_backward",
           "mhsa_forward", "softmax_backward", "softmax_forward", "BlockCache", "MLPCache",
           "block_attention", "block_backward", "block_forward", "block_qkv_forward", "block_rows_forward", "mlp_backward", "mlp_forward",
           "BatchRows", "drop_path_backward", "drop_path_forward", "dropout_backward",
           "dropout_forward", "cls_backward", "cls_forward", "insert_tokens_backward",
           "insert_tokens_forward", "patch_embed_backward", "patch_embed_forward", "patchify",
           "pos_embed_backward", "pos_embed_forward", "sincos_2d", "unpatchify", "HeadCache",
           "head_backward", "head_forward", "linear_backward", "linear_forward",
           "cross_entropy_backward", "cross_entropy_forward", "AffineCache",
           "affine_into_linear_backward", "affine_into_linear_forward", "affine_linear_inputs",
           "fold_affine_backward",
           "fold_affine_forward", "layernorm_backward", "layernorm_forward", "normalize_backward",
           "normalize_forward", "layer_scale_backward", "layer_scale_forward"]
