"""Per-GPU training memory of an OLMo-2 shape: parameters, gradients, optimizer state, activations.

The estimate follows what glasslm's training step keeps alive (docs/training.md, "Memory per GPU"):
- parameters: fp32 master weights, 4 bytes each (sharded over ranks under FSDP);
- gradients: fp32, 4 bytes each (sharded under FSDP);
- optimizer: AdamW's two fp32 moments, 8 bytes per parameter (sharded under FSDP);
- autocast weight copies: under bf16 autocast each matmul weight is cast to bf16 once per forward and
  the copy is saved for backward (2 bytes per matmul parameter); FSDP2's bf16 mixed precision gathers
  bf16 weights instead, so no copies there, but two blocks' gathered weights and one block's unsharded
  fp32 gradients are in flight;
- activations: the tensors autograd saves for backward, counted tensor by tensor from model/olmo2.py in
  eager mode (``layer_bytes_per_token``). The residual stream is fp32 (the embedding is fp32 and each
  block adds its bf16 output into it); RMSNorm saves its fp32 input and normalised output; attention
  saves q, k, v, its output and the log-sum-exp (no seq² term: SDPA's fused kernels keep no score matrix);
  SwiGLU saves its input and four hidden-sized tensors. torch.compile recomputes pointwise ops and saves
  less, so for compiled steps the eager figure is an upper bound. With activation checkpointing each
  block keeps only its fp32 input, plus one block's activations while it is recomputed;
- loss head: the chunked head (model.loss.head_objective) computes its gradients in the forward and
  keeps them (hidden-state gradients per token and an fp32 vocab×d head gradient) plus one chunk's fp32
  logits; the plain path (FSDP) keeps the whole batch's logits and makes an fp32 gradient of that size.

Peak = parameters + optimizer + max(autocast copies + activations + loss head + FSDP buffers, gradients):
activations are largest at the end of the forward, before any gradient exists (the trainer zeroes
gradients with set_to_none), and are freed as gradients appear. CUDA's context and the allocator's
fragmentation are not counted (compare with ``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

from dataclasses import dataclass

from glasslm.model.olmo2 import ModelConfig, matmul_params, param_counts

FP32, BF16 = 4, 2


@dataclass(frozen=True)
class MemoryPlan:
    """How the model is trained: what the estimate depends on besides its shape."""

    micro_batch: int
    seq_len: int
    world_size: int = 1
    fsdp: bool = False
    activation_checkpointing: bool = False
    bf16: bool = True  # bf16 autocast (glasslm's GPU default); False: fp32 throughout
    chunked_head: bool | None = None  # None: as the trainer decides (chunked unless FSDP)
    loss_chunk_tokens: int = 256  # trainer.loss_chunk_tokens

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len

    @property
    def uses_chunked_head(self) -> bool:
        return (not self.fsdp) if self.chunked_head is None else self.chunked_head


def layer_bytes_per_token(config: ModelConfig, bf16: bool) -> int:
    """Bytes autograd saves per token in one transformer block (eager), as counted on model/olmo2.py.

    Measured exactly with saved-tensor hooks on CPU for fp32 and bf16 autocast (tests/test_model_memory.py).
    """
    d, q, kv, hidden, heads = (
        config.d_model,
        config.n_heads * config.head_dim,
        config.kv_heads * config.head_dim,
        config.mlp_hidden,
        config.n_heads,
    )
    a = BF16 if bf16 else FP32  # matmul outputs and their (cast) inputs

    # RMSNorm on dim: its fp32 input and normalised output, and one fp32 rstd per token.
    def norm(dim: int) -> int:
        return 2 * dim * FP32 + FP32

    # Under autocast every linear casts its input afresh (q, k, v: three bf16 copies of the same x); in
    # fp32 the three share one tensor.
    qkv_inputs = (3 if bf16 else 1) * d * a
    qk_norm = norm(q) + norm(kv) if config.architecture == "olmo2" else 0
    # SDPA: roped q and k, v, the output (also o_proj's input: same storage), log-sum-exp per head (fp32).
    sdpa = (q + kv + kv + q) * a + heads * FP32
    mlp_inputs = (2 if bf16 else 1) * d * a  # gate and up each cast their input under autocast
    swiglu = 4 * hidden * a  # gate output, silu(gate), up output, their product (down's input)
    block_norms = 2 * norm(d)  # attn_norm, mlp_norm (Llama: the same two, on the inputs instead)
    return qkv_inputs + qk_norm + sdpa + mlp_inputs + swiglu + block_norms


def block_params(config: ModelConfig) -> int:
    counts = param_counts(config)
    return (
        counts["non_embedding"]
        - (0 if config.tie_embeddings else config.vocab_size * config.d_model)
        - config.d_model
    ) // config.n_layers


def estimate_memory(config: ModelConfig, plan: MemoryPlan) -> dict[str, int]:
    """Bytes per GPU, by part, and the estimated ``peak``; see the module docstring for the model."""
    total = param_counts(config)["total"]
    shard = plan.world_size if plan.fsdp else 1
    params = -(-total // shard) * FP32
    grads = -(-total // shard) * FP32
    optimizer = -(-total // shard) * 2 * FP32
    # The chunked head casts the head weight itself (counted in loss_head, alive only in the forward).
    copied = matmul_params(config) - (config.vocab_size * config.d_model if plan.uses_chunked_head else 0)
    copies = copied * BF16 if plan.bf16 and not plan.fsdp else 0
    fsdp_buffers = 0
    if plan.fsdp:
        # Two blocks' gathered weights (the current one and the prefetched next) in the compute dtype,
        # one block's unsharded fp32 gradients before the reduce-scatter, and the root's gathered
        # embedding and head (kept for the whole step).
        mp = BF16 if plan.bf16 else FP32
        root = total - config.n_layers * block_params(config)
        fsdp_buffers = 2 * block_params(config) * mp + block_params(config) * FP32 + root * mp
    tokens = plan.tokens
    layer = layer_bytes_per_token(config, plan.bf16)
    if plan.activation_checkpointing:
        # Each block keeps its fp32 input; one block's activations exist while it is recomputed.
        per_token = config.n_layers * config.d_model * FP32 + layer
    else:
        per_token = config.n_layers * layer
    # Final norm (fp32 input and output, rstd) and the token ids and labels (int64).
    per_token += 2 * config.d_model * FP32 + FP32 + 2 * 8
    activations = per_token * tokens
    vd, a = config.vocab_size * config.d_model, BF16 if plan.bf16 else FP32
    if plan.uses_chunked_head:
        chunk = min(plan.loss_chunk_tokens or tokens, tokens)
        # Kept for backward: the hidden-state gradients (compute dtype) and the fp32 head gradient.
        # Alive during the last chunk: its fp32 logits, and under bf16 their bf16 gradient and the bf16
        # copies of the hidden states and of the head weight.
        head = tokens * config.d_model * a + vd * FP32 + chunk * config.vocab_size * FP32
        if plan.bf16:
            head += tokens * config.d_model * BF16 + vd * BF16 + chunk * config.vocab_size * BF16
    else:
        # Logits (compute dtype) saved for the loss's backward, and its fp32 gradient made from them.
        head = tokens * config.vocab_size * (a + FP32)
    forward_peak = copies + activations + head + fsdp_buffers
    return {
        "parameters": params,
        "gradients": grads,
        "optimizer": optimizer,
        "autocast_weight_copies": copies,
        "activations": activations,
        "loss_head": head,
        "fsdp_buffers": fsdp_buffers,
        "peak": params + optimizer + max(forward_peak, grads),
    }
