"""Fine-tuning: datasets from chats, LoRA training, and conversion of PEFT adapters to LoRA GGUF."""
