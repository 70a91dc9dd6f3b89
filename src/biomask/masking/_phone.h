/* Phone-number layout kernels (see _phone.c), registered by _kernels.c. */
#ifndef BIOMASK_PHONE_H
#define BIOMASK_PHONE_H
#include <Python.h>

PyObject *bm_phone_scan(PyObject *self, PyObject *args);
PyObject *bm_phone_positions(PyObject *self, PyObject *args);

#endif
