"""Layer table: attention of real networks: scaled_dot_product_attention, masked_softmax (on every
mask broadcast pattern these networks produce) and nn.MultiheadAttention (projections included).

Masks (bool, True = attend; key padding keeps a random prefix of at least half the keys):
"none"; "causal" (is_causal=True for SDPA and MultiheadAttention); "causal_2d" (an (Lq, Lk)
causal mask, as GPT-2's eager attention and nn.Transformer build it); "key_padding" (B, 1, 1, Lk);
"causal_padding" (B, 1, Lq, Lk) for a padded batch under a causal mask; "full" (B, H, Lq, Lk),
what nn.MultiheadAttention makes of a key padding mask together with an attention mask.

* bert_base_l128 (B8) and bert_base_l512 (B2): 12 heads of 64, key padding;
* vit_b_16 (B8, 197 tokens): 12 heads of 64, no mask (torchvision's encoder uses
  nn.MultiheadAttention);
* gpt2_l1024 (B1): GPT-2 small over its full 1024-token context, causal; gpt2_l256_padded (B8):
  a padded batch of 256-token prompts, causal and key padding;
* whisper_base (B1): encoder self-attention over 1500 frames, decoder self-attention (causal) over
  448 tokens and cross-attention from 448 tokens to the 1500 frames; 8 heads of 64;
* llama3_8b (B1): grouped-query attention, 32 query heads sharing 8 key/value heads of 128:
  a 512-token causal prefill and one decode step against a 2048-token cache;
* gpt_small (B8, 256 tokens): the GPT-style decoder of the models suite (nn.TransformerEncoder
  layers, 256 wide, 4 heads of 64, causal and key padding masks).
"""
from dlkern.suites.table import Row

FAMILY = "attention"


def _sdpa(name, batch, heads, q_len, kv_len, head_dim, mask, kv_heads=None, count=1):
    args = dict(heads=heads, kv_heads=kv_heads or heads, q_len=q_len, kv_len=kv_len,
                head_dim=head_dim, mask=mask)
    return Row(name, FAMILY, "scaled_dot_product_attention", args, batch, count)


def _softmax(name, batch, heads, q_len, kv_len, mask, count=1):
    args = dict(heads=heads, q_len=q_len, kv_len=kv_len, mask=mask)
    return Row(name, FAMILY, "masked_softmax", args, batch, count)


def _mha(name, batch, embed_dim, num_heads, q_len, kv_len, mask, cross=False, count=1):
    args = dict(embed_dim=embed_dim, num_heads=num_heads, q_len=q_len, kv_len=kv_len, mask=mask,
                cross=cross)
    return Row(name, FAMILY, "MultiheadAttention", args, batch, count)


def bert_base(batch, length):
    prefix = f"bert_base_l{length}.encoder.layer.0.attention"
    return [_sdpa(f"{prefix}.self", batch, 12, length, length, 64, "key_padding", count=12),
            _softmax(f"{prefix}.self.softmax", batch, 12, length, length, "key_padding", count=12),
            _mha(prefix, batch, 768, 12, length, length, "key_padding", count=12)]


def vit_b_16(batch=8, tokens=197):
    prefix = "vit_b_16.encoder.layers.encoder_layer_0.self_attention"
    return [_sdpa(f"{prefix}.sdpa", batch, 12, tokens, tokens, 64, "none", count=12),
            _softmax(f"{prefix}.softmax", batch, 12, tokens, tokens, "none", count=12),
            _mha(prefix, batch, 768, 12, tokens, tokens, "none", count=12)]


def gpt2():
    return [_sdpa("gpt2_l1024.h.0.attn", 1, 12, 1024, 1024, 64, "causal", count=12),
            _softmax("gpt2_l1024.h.0.attn.softmax", 1, 12, 1024, 1024, "causal_2d", count=12),
            _mha("gpt2_l1024.h.0.attn.mha", 1, 768, 12, 1024, 1024, "causal", count=12),
            _sdpa("gpt2_l256_padded.h.0.attn", 8, 12, 256, 256, 64, "causal_padding", count=12),
            _softmax("gpt2_l256_padded.h.0.attn.softmax", 8, 12, 256, 256, "causal_padding",
                     count=12)]


def whisper_base(batch=1, frames=1500, tokens=448):
    return [_sdpa("whisper_base.encoder.blocks.0.attn", batch, 8, frames, frames, 64, "none",
                  count=6),
            _sdpa("whisper_base.decoder.blocks.0.attn", batch, 8, tokens, tokens, 64, "causal",
                  count=6),
            _softmax("whisper_base.decoder.blocks.0.attn.softmax", batch, 8, tokens, tokens,
                     "causal_2d", count=6),
            _sdpa("whisper_base.decoder.blocks.0.cross_attn", batch, 8, tokens, frames, 64, "none",
                  count=6),
            _mha("whisper_base.decoder.blocks.0.cross_attn.mha", batch, 512, 8, tokens, frames,
                 "none", cross=True, count=6)]


def llama3_8b(batch=1):
    return [_sdpa("llama3_8b.layers.0.attention.prefill", batch, 32, 512, 512, 128, "causal",
                  kv_heads=8, count=32),
            _sdpa("llama3_8b.layers.0.attention.decode", batch, 32, 1, 2048, 128, "none",
                  kv_heads=8, count=32)]


def gpt_small(batch=8, length=256, d_model=256, heads=4, layers=4):
    prefix = "gpt_small.encoder.layers.0.self_attn"
    return [_mha(prefix, batch, d_model, heads, length, length, "causal_padding", count=layers),
            _sdpa(f"{prefix}.sdpa", batch, heads, length, length, d_model // heads, "full",
                  count=layers),
            _softmax(f"{prefix}.softmax", batch, heads, length, length, "full", count=layers)]


ROWS = (bert_base(8, 128) + bert_base(2, 512) + vit_b_16() + gpt2() + whisper_base() + llama3_8b()
        + gpt_small())

QUICK = ("bert_base_l128.encoder.layer.0.attention.self", "gpt2_l256_padded.h.0.attn.softmax",
         "whisper_base.decoder.blocks.0.cross_attn", "llama3_8b.layers.0.attention.decode",
         "vit_b_16.encoder.layers.encoder_layer_0.self_attention")
