"""Datasets as Arrow shards and few-shot episodes sampled from them."""
