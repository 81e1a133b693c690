"""Fine-tuning jobs (after the OpenAI fine-tuning jobs API)."""

# The event streams were a job's before evaluations had any; tests still reach them from here.
from service.tasks import streams as streams
