"""Model components: typed media, encoders, projectors, the composite model and its checkpoint format,
trainable groups. Import from the submodules directly."""
