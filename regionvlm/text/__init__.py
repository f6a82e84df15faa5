"""What the model reads and writes as text, in one place: the chat templates a conversation is rendered with
(`regionvlm.text.templates`), the task-guided prompts it is asked in and the parsers of their answers
(`regionvlm.text.prompts`: "Region [k]." is written and read beside the REC prompt). Data, evaluation and
inference import these; nothing here imports them back."""
