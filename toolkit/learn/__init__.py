"""What the training stages share: datasets, transforms, backbones, and the one training loop."""
