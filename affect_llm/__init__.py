"""affect-llm: explainable multimodal emotion reasoning.

Audio and video encoders feed projected tokens into a LoRA-tuned causal LLM that answers with
emotion labels and a free-text explanation of the cues behind them.
"""

__version__ = "0.1.0"
