"""Fine-tuning jobs (after the OpenAI fine-tuning jobs API)."""
