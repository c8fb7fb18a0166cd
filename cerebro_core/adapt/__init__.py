"""Adapt: vocabulary + prompts, pseudo-label selection, the iterate-and-fine-tune loop."""
