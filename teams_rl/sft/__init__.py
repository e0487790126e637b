"""Stage 3, supervised fine-tuning with TRL's ``SFTTrainer`` and peft: the recipe (``args``), rows to chats
(``data``), tokenizer and base model (``model``), training and saving (``train``), the saved-weights check
(``weights``) and the model card's facts (``card``)."""
