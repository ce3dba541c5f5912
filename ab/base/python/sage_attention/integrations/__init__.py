"""Integrations with model libraries (imported on demand, so neither library is a dependency):

    import sage_attention.integrations.transformers   # registers attn_implementation="sage"
    from sage_attention.integrations.diffusers import apply_sage_attention
"""
