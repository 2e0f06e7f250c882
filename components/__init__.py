"""TFX components and module code for ctpipe (trainer, data gate, atomic pusher)."""
