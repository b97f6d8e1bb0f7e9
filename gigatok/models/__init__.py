"""Model definitions: CNN encoder/decoder, ViT and Q-Former stacks, quantizer, tokenizer, discriminator."""
