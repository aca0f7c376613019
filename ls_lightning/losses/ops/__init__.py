"""Kernels of the losses, internal to :mod:`ls_lightning.losses` (call the functions there): the chunked one-pass
eager kernel (:mod:`.fused`), the code ``torch.compile`` traces (:mod:`.traced`), and the fused linear kernel with
its custom op (:mod:`.linear`)."""
