"""What every method shares: the `Method` contract and its hooks (base), the registry
(registry), the encoders (encoders), the fusion heads (fusion) and the optimiser and
scheduler factory (optim). Each method is one module beside this package.
"""
