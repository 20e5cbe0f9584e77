"""affect-llm: explainable multimodal emotion reasoning.

Audio and video encoders feed projected tokens into a LoRA-tuned causal LLM that answers with
emotion labels and a free-text explanation of the cues behind them.

Importing the package registers the model with the transformers auto classes, so that after
``import affect_llm`` a checkpoint loads with ``AutoConfig``, ``AutoModelForCausalLM`` and
``AutoProcessor.from_pretrained(path)`` (no ``trust_remote_code``).
"""

from affect_llm.configuration import AffectConfig
from affect_llm.modeling import face_cnn as _face_cnn  # noqa: F401  (registers the face CNN with AutoModel)
from affect_llm.modeling.model import AffectForConditionalGeneration
from affect_llm.processing.processor import AffectProcessor

__version__ = "0.1.0"
__all__ = ["AffectConfig", "AffectForConditionalGeneration", "AffectProcessor", "__version__"]
