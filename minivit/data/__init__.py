"""Where examples come from, one file per source over shared pieces:

    batches.py       Dataset, normalize, random_shift, BatchIterator (no dataset defaults)
    download.py      mirrors, SHA-256 checks, atomic saves
    mnist.py         MNIST (IDX files) and its Preprocessing
    imagefolder.py   a folder with one sub-folder of images per class
"""
from .batches import BatchIterator, Dataset, iterate_batches, normalize, random_shift
from .download import DataError
from .imagefolder import ImageFolderError, load_image_folder
from .mnist import MNIST_MEAN, MNIST_STD, load_mnist, mnist_dataset

__all__ = ["BatchIterator", "Dataset", "iterate_batches", "normalize", "random_shift",
           "DataError", "ImageFolderError", "load_image_folder", "MNIST_MEAN", "MNIST_STD",
           "load_mnist", "mnist_dataset"]
