/*
 * roomcast.uring._uring: send the same bytes to many sockets with few syscalls.
 *
 *   Ring(entries=256)                       an io_uring instance (raw syscalls, mmap'd rings)
 *   Ring.send_all(fds, data, *, release_gil=False) -> [(index, result), ...]
 *   Ring.close()
 *   write_all(fds, data) -> [(index, result), ...]   a plain C loop of send(): the floor
 *
 * Both send calls share one contract: every fd gets one non-blocking send of `data`
 * (MSG_DONTWAIT | MSG_NOSIGNAL); when the call returns every send has finished; the list names
 * only the fds whose send did not complete fully, in index order: result >= 0 is the number of
 * bytes actually sent (a short write), result < 0 is -errno. No Python code runs per send.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#if defined(__linux__) && __has_include(<linux/io_uring.h>)
#define HAVE_IO_URING 1
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#else
#define HAVE_IO_URING 0
#endif

#define SEND_FLAGS (MSG_DONTWAIT | MSG_NOSIGNAL)

/* ---- fds: a list/tuple of ints or any buffer of C ints (array('i')) ---- */

typedef struct {
    int *fds;
    Py_ssize_t n;
    Py_buffer view; /* held when the fds came from a buffer */
    int has_view;
    int owned;      /* fds was PyMem_Malloc'ed */
} FdList;

static void fdlist_release(FdList *f) {
    if (f->has_view) PyBuffer_Release(&f->view);
    if (f->owned) PyMem_Free(f->fds);
    f->fds = NULL;
    f->has_view = f->owned = 0;
}

static int fdlist_get(PyObject *obj, FdList *f) {
    memset(f, 0, sizeof(*f));
    if (PyObject_CheckBuffer(obj) && !PyBytes_Check(obj) && !PyByteArray_Check(obj)) {
        if (PyObject_GetBuffer(obj, &f->view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) return -1;
        f->has_view = 1;
        const char *fmt = f->view.format ? f->view.format : "B";
        if (f->view.itemsize != (Py_ssize_t)sizeof(int) || (strcmp(fmt, "i") && strcmp(fmt, "@i") &&
                                                             strcmp(fmt, "=i"))) {
            PyErr_SetString(PyExc_TypeError, "fds buffer must hold C ints (array('i'))");
            fdlist_release(f);
            return -1;
        }
        f->fds = (int *)f->view.buf;
        f->n = f->view.len / (Py_ssize_t)sizeof(int);
        return 0;
    }
    PyObject *seq = PySequence_Fast(obj, "fds must be a list of ints or an array('i')");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    f->fds = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(int));
    if (!f->fds) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    f->owned = 1;
    f->n = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* ints only: __index__ would run Python code that could change the list under `items` */
        if (!PyLong_Check(items[i])) {
            PyErr_Format(PyExc_TypeError, "fds[%zd] is %.100s, not an int", i, Py_TYPE(items[i])->tp_name);
            goto fail;
        }
        long v = PyLong_AsLong(items[i]);
        if (v == -1 && PyErr_Occurred()) goto fail;
        if (v < INT_MIN || v > INT_MAX) {
            PyErr_SetString(PyExc_OverflowError, "fd out of range");
            goto fail;
        }
        f->fds[i] = (int)v;
    }
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    fdlist_release(f);
    return -1;
}

static int get_data(PyObject *obj, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) return -1;
    if (view->len > INT_MAX) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "data larger than 2 GiB");
        return -1;
    }
    return 0;
}

/* Append (index, result) to list; -1 on error. */
static int append_failure(PyObject *list, Py_ssize_t index, long result) {
    PyObject *t = Py_BuildValue("(nl)", index, result);
    if (!t) return -1;
    int rc = PyList_Append(list, t);
    Py_DECREF(t);
    return rc;
}

/* ---- write_all: the floor ---- */

PyDoc_STRVAR(write_all_doc,
"write_all(fds, data) -> list[tuple[int, int]]\n\n"
"One send(fd, data, MSG_DONTWAIT | MSG_NOSIGNAL) per fd, in a C loop. Returns (index, result)\n"
"for every fd whose send did not complete fully: result >= 0 bytes sent, < 0 is -errno.");

static PyObject *write_all(PyObject *self, PyObject *args) {
    PyObject *fds_obj, *data_obj;
    if (!PyArg_ParseTuple(args, "OO:write_all", &fds_obj, &data_obj)) return NULL;
    FdList fl;
    Py_buffer data;
    if (fdlist_get(fds_obj, &fl) < 0) return NULL;
    if (get_data(data_obj, &data) < 0) {
        fdlist_release(&fl);
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (!out) goto done;
    const char *buf = data.buf;
    size_t len = (size_t)data.len;
    for (Py_ssize_t i = 0; i < fl.n; i++) {
        ssize_t r;
        do {
            r = send(fl.fds[i], buf, len, SEND_FLAGS);
        } while (r < 0 && errno == EINTR);
        long res = r < 0 ? -(long)errno : (long)r;
        if (res != (long)len && append_failure(out, i, res) < 0) {
            Py_CLEAR(out);
            break;
        }
    }
done:
    PyBuffer_Release(&data);
    fdlist_release(&fl);
    return out;
}

#if HAVE_IO_URING

/* ---- Ring ---- */

typedef struct {
    PyObject_HEAD
    int ring_fd;
    unsigned entries;
    int busy;            /* a send_all is running (guards against re-entry from other threads) */
    unsigned setup_flags;
    /* SQ */
    void *sq_ptr;
    size_t sq_len;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    struct io_uring_sqe *sqes;
    size_t sqes_len;
    /* CQ */
    void *cq_ptr;
    size_t cq_len;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_cqe *cqes;
    int *results;        /* one slot per SQE of a batch */
} RingObject;

static int sys_setup(unsigned entries, struct io_uring_params *p) {
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags) {
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
}

static void ring_unmap(RingObject *r) {
    if (r->sqes && r->sqes != MAP_FAILED) munmap(r->sqes, r->sqes_len);
    if (r->cq_ptr && r->cq_ptr != MAP_FAILED && r->cq_ptr != r->sq_ptr) munmap(r->cq_ptr, r->cq_len);
    if (r->sq_ptr && r->sq_ptr != MAP_FAILED) munmap(r->sq_ptr, r->sq_len);
    r->sqes = NULL;
    r->cq_ptr = r->sq_ptr = NULL;
    if (r->ring_fd >= 0) close(r->ring_fd);
    r->ring_fd = -1;
    PyMem_Free(r->results);
    r->results = NULL;
}

static const char *explain(int err) {
    switch (err) {
    case ENOSYS: return "io_uring is not in this kernel (ENOSYS)";
    case EPERM: return "io_uring is not permitted here (EPERM: kernel.io_uring_disabled, or a seccomp or LSM policy)";
    case EACCES: return "io_uring is not permitted here (EACCES)";
    case ENOMEM: return "io_uring rings could not be allocated (ENOMEM: locked-memory limit?)";
    default: return "io_uring_setup failed";
    }
}

static int ring_init(RingObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"entries", NULL};
    int entries = 256;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|i:Ring", kwlist, &entries)) return -1;
    if (entries < 1 || entries > 32768) {
        PyErr_SetString(PyExc_ValueError, "entries must be in 1..32768");
        return -1;
    }
    if (self->ring_fd >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "Ring already initialised");
        return -1;
    }
    /* Fewer flags on each retry: older kernels refuse the newer ones with EINVAL. */
    unsigned tries[] = {
#if defined(IORING_SETUP_SUBMIT_ALL) && defined(IORING_SETUP_COOP_TASKRUN)
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
#endif
#ifdef IORING_SETUP_SUBMIT_ALL
        IORING_SETUP_SUBMIT_ALL,
#endif
        0,
    };
    struct io_uring_params p;
    int fd = -1, err = 0;
    for (size_t t = 0; t < sizeof(tries) / sizeof(tries[0]); t++) {
        memset(&p, 0, sizeof(p));
        p.flags = tries[t];
        fd = sys_setup((unsigned)entries, &p);
        if (fd >= 0) break;
        err = errno;
        if (err != EINVAL) break;
    }
    if (fd < 0) {
        /* OSError(errno, message): errno stays on the exception */
        PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err, explain(err));
        if (exc) {
            PyErr_SetObject(PyExc_OSError, exc);
            Py_DECREF(exc);
        }
        return -1;
    }
    self->ring_fd = fd;
    self->setup_flags = p.flags;
    self->entries = p.sq_entries;
    self->sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    self->cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    int single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single) {
        if (self->cq_len > self->sq_len) self->sq_len = self->cq_len;
        self->cq_len = self->sq_len;
    }
    self->sq_ptr = mmap(NULL, self->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                        IORING_OFF_SQ_RING);
    if (self->sq_ptr == MAP_FAILED) goto fail;
    if (single) {
        self->cq_ptr = self->sq_ptr;
    } else {
        self->cq_ptr = mmap(NULL, self->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                            fd, IORING_OFF_CQ_RING);
        if (self->cq_ptr == MAP_FAILED) goto fail;
    }
    self->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
    self->sqes = mmap(NULL, self->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                      IORING_OFF_SQES);
    if (self->sqes == MAP_FAILED) goto fail;
    char *sq = self->sq_ptr, *cq = self->cq_ptr;
    self->sq_head = (unsigned *)(sq + p.sq_off.head);
    self->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    self->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    self->sq_array = (unsigned *)(sq + p.sq_off.array);
    self->cq_head = (unsigned *)(cq + p.cq_off.head);
    self->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    self->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    self->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    /* The SQ index array maps slot i to SQE i, once and for all. */
    for (unsigned i = 0; i < p.sq_entries; i++) self->sq_array[i] = i;
    self->results = PyMem_Malloc(p.sq_entries * sizeof(int));
    if (!self->results) {
        ring_unmap(self);
        PyErr_NoMemory();
        return -1;
    }
    return 0;
fail:
    err = errno;
    ring_unmap(self);
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

static PyObject *ring_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    RingObject *self = (RingObject *)type->tp_alloc(type, 0);
    if (self) self->ring_fd = -1;
    return (PyObject *)self;
}

static void ring_dealloc(RingObject *self) {
    ring_unmap(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ring_check(RingObject *self) {
    if (self->ring_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "Ring is closed");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Ring is in use by another send_all");
        return -1;
    }
    return 0;
}

/* Submit everything queued in the SQ and wait until `want` CQEs are ready. 0, or -errno. */
static int submit_and_wait(RingObject *self, unsigned want) {
    for (;;) {
        unsigned sq_pending =
            *self->sq_tail - __atomic_load_n(self->sq_head, __ATOMIC_ACQUIRE);
        unsigned ready = __atomic_load_n(self->cq_tail, __ATOMIC_ACQUIRE) - *self->cq_head;
        if (sq_pending == 0 && ready >= want) return 0;
        int r = sys_enter(self->ring_fd, sq_pending, want > ready ? want - ready : 0,
                          IORING_ENTER_GETEVENTS);
        if (r < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY) return -errno;
    }
}

/* The batch loop of send_all and send_many: every (fd, frame) of every item, `entries` per
   io_uring_enter; with or without the GIL (it touches no Python object). 0 or -errno. */
static int ring_send_many_batches(RingObject *self, FdList *fls, Py_buffer *datas,
                                  Py_ssize_t total, int *results) {
    unsigned mask = *self->sq_mask, cmask = *self->cq_mask;
    Py_ssize_t j = 0, i = 0, flat = 0; /* item, index in it, index over all items */
    while (flat < total) {
        unsigned batch = 0;
        unsigned tail = *self->sq_tail;
        while (batch < self->entries && flat + (Py_ssize_t)batch < total) {
            while (i >= fls[j].n) { /* skip items with no fds left */
                j++;
                i = 0;
            }
            struct io_uring_sqe *sqe = &self->sqes[(tail + batch) & mask];
            memset(sqe, 0, sizeof(*sqe));
            sqe->opcode = IORING_OP_SEND;
            sqe->fd = fls[j].fds[i];
            sqe->addr = (uint64_t)(uintptr_t)datas[j].buf;
            sqe->len = (unsigned)datas[j].len;
            sqe->msg_flags = SEND_FLAGS;
            sqe->user_data = batch;
            batch++;
            i++;
        }
        __atomic_store_n(self->sq_tail, tail + batch, __ATOMIC_RELEASE);
        int rc = submit_and_wait(self, batch);
        if (rc < 0) return rc;
        unsigned head = *self->cq_head;
        for (unsigned k = 0; k < batch; k++) {
            struct io_uring_cqe *cqe = &self->cqes[(head + k) & cmask];
            if (cqe->user_data < batch) results[flat + (Py_ssize_t)cqe->user_data] = cqe->res;
        }
        __atomic_store_n(self->cq_head, head + batch, __ATOMIC_RELEASE);
        flat += batch;
    }
    return 0;
}

PyDoc_STRVAR(send_all_doc,
"send_all(fds, data, *, release_gil=False) -> list[tuple[int, int]]\n\n"
"IORING_OP_SEND of data to every fd (MSG_DONTWAIT | MSG_NOSIGNAL), up to `entries` sends per\n"
"io_uring_enter; each batch is submitted and all its completions reaped before the next, so\n"
"every send has finished when this returns. Returns (index, result) for every fd whose send did\n"
"not complete fully: result >= 0 bytes sent (short write), < 0 is -errno.");

static PyObject *ring_send_all(RingObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"fds", "data", "release_gil", NULL};
    PyObject *fds_obj, *data_obj;
    int release = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|$p:send_all", kwlist, &fds_obj, &data_obj,
                                     &release))
        return NULL;
    if (ring_check(self) < 0) return NULL;
    FdList fl;
    Py_buffer data;
    if (fdlist_get(fds_obj, &fl) < 0) return NULL;
    if (get_data(data_obj, &data) < 0) {
        fdlist_release(&fl);
        return NULL;
    }
    PyObject *out = NULL;
    int *results = PyMem_Malloc((size_t)(fl.n > 0 ? fl.n : 1) * sizeof(int));
    if (!results) {
        PyErr_NoMemory();
        goto done;
    }
    /* -ECANCELED stays where no completion came (it cannot, but never report success). */
    for (Py_ssize_t i = 0; i < fl.n; i++) results[i] = -ECANCELED;
    int rc;
    self->busy = 1;
    if (release) {
        Py_BEGIN_ALLOW_THREADS
        rc = ring_send_many_batches(self, &fl, &data, fl.n, results);
        Py_END_ALLOW_THREADS
    } else {
        rc = ring_send_many_batches(self, &fl, &data, fl.n, results);
    }
    self->busy = 0;
    if (rc < 0) {
        /* The ring is in an unknown state: close it so that nothing reuses it. */
        ring_unmap(self);
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        PyMem_Free(results);
        goto done;
    }
    out = PyList_New(0);
    if (out) {
        for (Py_ssize_t i = 0; i < fl.n; i++) {
            if (results[i] != (int)data.len && append_failure(out, i, results[i]) < 0) {
                Py_CLEAR(out);
                break;
            }
        }
    }
    PyMem_Free(results);
done:
    PyBuffer_Release(&data);
    fdlist_release(&fl);
    return out;
}

PyDoc_STRVAR(send_many_doc,
"send_many(items) -> list[tuple[int, int, int]]\n\n"
"send_all for several frames at once: items is a list of (fds, data) pairs, whose sends share\n"
"batches of up to `entries` per io_uring_enter. A descriptor must appear at most once in a call\n"
"(two sends to one socket in one submission have no guaranteed order). Returns (item, index,\n"
"result) for every send that did not complete fully: result >= 0 bytes sent, < 0 is -errno.");

static PyObject *ring_send_many(RingObject *self, PyObject *args) {
    PyObject *items_obj;
    if (!PyArg_ParseTuple(args, "O:send_many", &items_obj)) return NULL;
    if (ring_check(self) < 0) return NULL;
    PyObject *items = PySequence_Fast(items_obj, "items must be a list of (fds, data)");
    if (!items) return NULL;
    Py_ssize_t m = PySequence_Fast_GET_SIZE(items), got = 0, total = 0;
    FdList *fls = PyMem_Calloc((size_t)(m > 0 ? m : 1), sizeof(FdList));
    Py_buffer *datas = PyMem_Calloc((size_t)(m > 0 ? m : 1), sizeof(Py_buffer));
    int *results = NULL;
    PyObject *out = NULL;
    if (!fls || !datas) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < m; got++) {
        PyObject *it = PySequence_Fast_GET_ITEM(items, got);
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 2) {
            PyErr_SetString(PyExc_TypeError, "each item must be a (fds, data) tuple");
            goto done;
        }
        if (fdlist_get(PyTuple_GET_ITEM(it, 0), &fls[got]) < 0) goto done;
        if (get_data(PyTuple_GET_ITEM(it, 1), &datas[got]) < 0) {
            fdlist_release(&fls[got]);
            goto done;
        }
        total += fls[got].n;
    }
    results = PyMem_Malloc((size_t)(total > 0 ? total : 1) * sizeof(int));
    if (!results) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < total; k++) results[k] = -ECANCELED;
    self->busy = 1;
    int rc = ring_send_many_batches(self, fls, datas, total, results);
    self->busy = 0;
    if (rc < 0) {
        ring_unmap(self); /* unknown state: nothing may reuse it */
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    out = PyList_New(0);
    Py_ssize_t base = 0;
    for (Py_ssize_t j = 0; out && j < m; j++) {
        for (Py_ssize_t i = 0; i < fls[j].n; i++) {
            int r = results[base + i];
            if (r == (int)datas[j].len) continue;
            PyObject *t = Py_BuildValue("(nnl)", j, i, (long)r);
            if (!t || PyList_Append(out, t) < 0) {
                Py_XDECREF(t);
                Py_CLEAR(out);
                break;
            }
            Py_DECREF(t);
        }
        base += fls[j].n;
    }
done:
    for (Py_ssize_t k = 0; k < got; k++) {
        fdlist_release(&fls[k]);
        PyBuffer_Release(&datas[k]);
    }
    PyMem_Free(fls);
    PyMem_Free(datas);
    PyMem_Free(results);
    Py_DECREF(items);
    return out;
}

static PyObject *ring_close(RingObject *self, PyObject *unused) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Ring is in use by another send_all");
        return NULL;
    }
    ring_unmap(self);
    Py_RETURN_NONE;
}

static PyObject *ring_get_entries(RingObject *self, void *closure) {
    return PyLong_FromUnsignedLong(self->entries);
}

static PyObject *ring_get_closed(RingObject *self, void *closure) {
    return PyBool_FromLong(self->ring_fd < 0);
}

static PyObject *ring_get_flags(RingObject *self, void *closure) {
    return PyLong_FromUnsignedLong(self->setup_flags);
}

static PyMethodDef ring_methods[] = {
    {"send_all", (PyCFunction)(void (*)(void))ring_send_all, METH_VARARGS | METH_KEYWORDS, send_all_doc},
    {"send_many", (PyCFunction)ring_send_many, METH_VARARGS, send_many_doc},
    {"close", (PyCFunction)ring_close, METH_NOARGS, "Close the ring (idempotent)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ring_getset[] = {
    {"entries", (getter)ring_get_entries, NULL, "SQ entries: the most sends per io_uring_enter", NULL},
    {"closed", (getter)ring_get_closed, NULL, "True once close() ran (or a fatal error)", NULL},
    {"setup_flags", (getter)ring_get_flags, NULL, "the IORING_SETUP_* flags the kernel accepted", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "roomcast.uring._uring.Ring",
    .tp_basicsize = sizeof(RingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ring(entries=256): an io_uring instance for batched sends. OSError if io_uring\n"
              "is unavailable here (ENOSYS, EPERM: disabled or refused by seccomp).",
    .tp_new = ring_new,
    .tp_init = (initproc)ring_init,
    .tp_dealloc = (destructor)ring_dealloc,
    .tp_methods = ring_methods,
    .tp_getset = ring_getset,
};

#endif /* HAVE_IO_URING */

static PyMethodDef module_methods[] = {
    {"write_all", write_all, METH_VARARGS, write_all_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "roomcast.uring._uring",
    "Batched sends of one buffer to many sockets: io_uring (Ring) and a plain C loop (write_all).",
    -1, module_methods,
};

PyMODINIT_FUNC PyInit__uring(void) {
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
#if HAVE_IO_URING
    if (PyType_Ready(&RingType) < 0) goto fail;
    Py_INCREF(&RingType);
    if (PyModule_AddObject(m, "Ring", (PyObject *)&RingType) < 0) {
        Py_DECREF(&RingType);
        goto fail;
    }
#endif
    if (PyModule_AddIntConstant(m, "HAVE_IO_URING", HAVE_IO_URING) < 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
