"""Shipping a trained embedder: ONNX with a parity check, safetensors with metadata."""

from facerec.export.onnx import OnnxEmbedder, ParityReport, export_onnx, read_onnx_metadata
from facerec.export.weights import load_safetensors, read_safetensors_metadata, save_safetensors

__all__ = ["OnnxEmbedder", "ParityReport", "export_onnx", "read_onnx_metadata", "load_safetensors",
           "read_safetensors_metadata", "save_safetensors"]
