"""Transformers at tiny size: discover, permute every group (heads included), compare.

Hugging Face families (configs of hidden size 32, 2 layers, 4 heads, random init; Llama and
Qwen2 with 2 key/value heads, and Llama with 4; T5 with 2 encoder and 2 decoder layers) and the vision transformers of timm and
torchvision (small configs, random init, the classifier re-initialized so that it is not zero):
permutable / all groups of hidden units, permutable hidden units, movable head groups, the
largest output difference over three random permutations, and why the head groups and hidden
units that stay in place do.
The tables in docs/zoo.md come from this script.

    python benchmarks/zoo_transformers.py
"""

from __future__ import annotations

import warnings

import timm
import torch
import torchvision
import transformers as T

from modeconn import discover, permute

warnings.filterwarnings("ignore")


def families() -> dict:
    small = dict(vocab_size=100, max_position_embeddings=64)
    decoder = dict(small, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    decoder.update(num_key_value_heads=2, bos_token_id=0, eos_token_id=0)
    bert = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **small)
    gpt2 = dict(
        vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    vit = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    return {
        "BertForSequenceClassification": lambda: T.BertForSequenceClassification(T.BertConfig(**bert)),
        "DistilBertForSequenceClassification": lambda: T.DistilBertForSequenceClassification(
            T.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **small)
        ),
        "GPT2LMHeadModel": lambda: T.GPT2LMHeadModel(T.GPT2Config(**gpt2)),
        "LlamaForCausalLM (GQA)": lambda: T.LlamaForCausalLM(T.LlamaConfig(**decoder)),
        "LlamaForCausalLM (4 kv heads)": lambda: T.LlamaForCausalLM(
            T.LlamaConfig(**dict(decoder, num_key_value_heads=4))
        ),
        "Qwen2ForCausalLM (GQA)": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**decoder)),
        "ViTForImageClassification": lambda: T.ViTForImageClassification(
            T.ViTConfig(**vit, intermediate_size=64)
        ),
        "T5ForConditionalGeneration": lambda: T.T5ForConditionalGeneration(
            T.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
        ),
        # the families issue 30 found holding heads or units
        "FalconForCausalLM (multi-query)": lambda: T.FalconForCausalLM(
            T.FalconConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
        ),
        "GPTNeoXForCausalLM (rotary on 25%)": lambda: T.GPTNeoXForCausalLM(
            T.GPTNeoXConfig(**dict(decoder, num_key_value_heads=None), rotary_pct=0.25)
        ),
        "PhiForCausalLM (partial rotary)": lambda: T.PhiForCausalLM(
            T.PhiConfig(**dict(decoder, num_key_value_heads=None), partial_rotary_factor=0.5)
        ),
        "Phi3ForCausalLM (GQA, fused qkv)": lambda: T.Phi3ForCausalLM(
            T.Phi3Config(**decoder, pad_token_id=0)
        ),
        "BloomForCausalLM (ALiBi)": lambda: T.BloomForCausalLM(
            T.BloomConfig(vocab_size=100, hidden_size=32, n_layer=2, n_head=4)
        ),
        "Qwen3ForCausalLM (GQA, q/k norm)": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(**decoder, head_dim=8)),
        "Gemma3ForCausalLM (GQA, q/k norm)": lambda: T.Gemma3ForCausalLM(
            T.Gemma3TextConfig(**decoder, head_dim=8)
        ),
        "MixtralForCausalLM (4 experts, top 2)": lambda: T.MixtralForCausalLM(
            T.MixtralConfig(**decoder, num_local_experts=4, num_experts_per_tok=2)
        ),
        "DebertaV2ForSequenceClassification": lambda: T.DebertaV2ForSequenceClassification(
            T.DebertaV2Config(**bert)
        ),
    }


def vision() -> dict:
    return {
        "timm vit_tiny_patch16_224": lambda: timm.create_model(
            "vit_tiny_patch16_224", img_size=32, patch_size=8
        ),
        "timm deit_tiny_patch16_224": lambda: timm.create_model(
            "deit_tiny_patch16_224", img_size=32, patch_size=8
        ),
        "timm swin_tiny_patch4_window7_224": lambda: timm.create_model(
            "swin_tiny_patch4_window7_224", img_size=56, embed_dim=24, depths=(1, 1), num_heads=(2, 4)
        ),
        "torchvision VisionTransformer": lambda: torchvision.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64
        ),
    }


def row(name: str, model: torch.nn.Module, inputs: dict, notes: dict) -> str:
    """One table row: discover, three random permutations, the largest output difference."""
    spec = discover(model, inputs)
    permutable, hidden = spec.units()
    heads = spec.heads
    units = [g for g in spec.groups.values() if g.hidden]

    def out(m: torch.nn.Module) -> torch.Tensor:
        y = m(**inputs)
        return y if isinstance(y, torch.Tensor) else y.logits

    with torch.no_grad():
        y = out(model)
        diff = max(
            float((out(permute(model, spec, spec.random_permutation(s))) - y).abs().max()) for s in range(3)
        )

    def short(why: str) -> str:  # without the node that gave it
        return why.split(" (")[0].split(" at node")[0]

    held = [f"heads: {short(h.reason)}" for h in heads if not h.permutable]
    held += [f"units: {short(g.fixes[0].message)}" for g in units if not g.permutable]
    if held:
        notes[name] = "; ".join(dict.fromkeys(held))
    return (
        f"| `{name}` | {sum(g.permutable for g in units)} / {len(units)} | {permutable} / {hidden} "
        f"({100 * permutable / hidden:.1f}%) | {sum(h.permutable for h in heads)} / {len(heads)} | {diff:.1e} |"
    )


def main() -> None:
    torch.manual_seed(0)
    text = {"input_ids": torch.randint(0, 100, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    header = "groups of hidden units (permutable / all) | hidden units permutable | head groups movable | max output diff |"
    notes: dict[str, str] = {}
    print(f"| family | {header}\n| --- | --- | --- | --- | --- |")
    for name, build in families().items():
        torch.manual_seed(0)
        inputs = {"pixel_values": torch.randn(2, 3, 16, 16)} if name.startswith("ViT") else text
        if name.startswith("T5"):  # an encoder-decoder: the decoder reads tokens of its own
            inputs = {"input_ids": text["input_ids"], "decoder_input_ids": text["input_ids"].flip(1)}
        print(row(name, build().eval(), inputs, notes))
    print(f"\n| vision model | {header}\n| --- | --- | --- | --- | --- |")
    for name, build in vision().items():
        torch.manual_seed(0)
        model = build().eval()
        for (
            m
        ) in model.modules():  # torchvision's classifier starts at zero: it would hide a wrong permutation
            if isinstance(m, torch.nn.Linear) and not m.weight.any():
                torch.nn.init.normal_(m.weight, std=0.1)
        size = 56 if "swin" in name else 32
        print(row(name, model, {"x": torch.randn(2, 3, size, size)}, notes))
    for name, why in notes.items():
        print(f"- {name}: what stays, and why: {why}")


if __name__ == "__main__":
    main()
