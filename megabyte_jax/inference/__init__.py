"""Inference: KV-cached generation (`generation`), its decoder (`decoding`), sampling from
logits (`sampling`) and scoring held-out bytes (`scoring`)."""
