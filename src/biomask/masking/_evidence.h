/* Residual-PII scan kernels of the lineage evidence collector (see _evidence.c),
 * registered by _kernels.c. */
#ifndef BIOMASK_EVIDENCE_H
#define BIOMASK_EVIDENCE_H
#include <Python.h>

PyObject *bm_ev_hash(PyObject *self, PyObject *args);
PyObject *bm_ev_scan(PyObject *self, PyObject *args);
PyObject *bm_ev_bits(PyObject *self, PyObject *args);
PyObject *bm_ev_probe(PyObject *self, PyObject *args);
PyObject *bm_ev_distinct(PyObject *self, PyObject *args);

#endif
