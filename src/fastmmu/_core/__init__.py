"""The compiled MMU core (Cython).  Contracts: the ``.pxd`` files beside this one."""
