"""Weight quantization: LSQ quantizer, model conversion, deployed weights, packed size."""
from .convert import (default_layers, deployed_state_dict, export_integer, latent_state, packed_size,
                      quantization_error,
                      quantize_model, step_parameters)
from .lsq import LSQ, fake_quantize, init_step, integer_codes, qrange, round_ste, scale_grad

__all__ = ["LSQ", "quantize_model", "quantization_error", "deployed_state_dict", "latent_state", "packed_size", "export_integer",
           "default_layers", "step_parameters", "fake_quantize", "init_step", "integer_codes", "qrange",
           "round_ste", "scale_grad"]
