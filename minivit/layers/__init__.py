"""The reference engine: each op's `x_forward(...) -> (out, cache)` and
`x_backward(dout, cache) -> grads` written next to each other, the math and its derivative in the
docstring. The definition of correct: every fast kernel in minivit/kernels/ is tested against
these pairs."""
from .activations import GELU, gelu_erf_backward, gelu_erf_forward, gelu_tanh_backward, gelu_tanh_forward, normal_cdf, tanh_backward, tanh_forward
from .attention import AttentionCache, MHSACache, attention_backward, attention_forward, attention_probs, mhsa_backward, mhsa_forward, softmax_backward, softmax_forward, split_heads
from .block import BlockCache, MLPCache, block_attention, block_backward, block_forward, mlp_backward, mlp_forward
from .dropout import BatchRows, drop_path_backward, drop_path_forward, dropout_backward, dropout_forward, dropout_mask
from .embed import cls_backward, cls_forward, insert_tokens_backward, insert_tokens_forward, patch_embed_backward, patch_embed_forward, patchify, pos_embed_backward, pos_embed_forward, sincos_2d, unpatchify
from .head import HeadCache, head_backward, head_forward
from .linear import linear_backward, linear_forward
from .loss import check_labels, cross_entropy_backward, cross_entropy_forward, cross_entropy_losses
from .norm import layernorm_backward, layernorm_forward
from .scale import layer_scale_backward, layer_scale_forward

__all__ = ["GELU", "gelu_erf_backward", "gelu_erf_forward", "gelu_tanh_backward", "gelu_tanh_forward",
           "normal_cdf", "tanh_backward", "tanh_forward", "AttentionCache", "MHSACache",
           "attention_backward", "attention_forward", "attention_probs", "mhsa_backward",
           "mhsa_forward", "softmax_backward", "softmax_forward", "split_heads", "BlockCache",
           "MLPCache", "block_attention", "block_backward", "block_forward", "mlp_backward",
           "mlp_forward", "BatchRows", "drop_path_backward", "drop_path_forward",
           "dropout_backward", "dropout_forward", "dropout_mask", "cls_backward", "cls_forward",
           "insert_tokens_backward", "insert_tokens_forward", "patch_embed_backward",
           "patch_embed_forward", "patchify", "pos_embed_backward", "pos_embed_forward",
           "sincos_2d", "unpatchify", "HeadCache", "head_backward", "head_forward",
           "linear_backward", "linear_forward", "cross_entropy_backward", "cross_entropy_forward",
           "cross_entropy_losses", "check_labels",
           "layernorm_backward", "layernorm_forward", "layer_scale_backward", "layer_scale_forward"]
