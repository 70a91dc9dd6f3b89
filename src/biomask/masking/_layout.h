/* Layout kernels for phone numbers and e-mail addresses (see _layout.c), registered by
 * _kernels.c. */
#ifndef BIOMASK_LAYOUT_H
#define BIOMASK_LAYOUT_H
#include <Python.h>

PyObject *bm_phone_scan(PyObject *self, PyObject *args);
PyObject *bm_phone_positions(PyObject *self, PyObject *args);
PyObject *bm_phone_take(PyObject *self, PyObject *args);
PyObject *bm_phone_put(PyObject *self, PyObject *args);
PyObject *bm_email_scan(PyObject *self, PyObject *args);

#endif
