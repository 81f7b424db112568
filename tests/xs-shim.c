/*
 * LD_PRELOAD shim that lets Debian's C xenstored (Xen 4.17) serve on a private Unix socket on a
 * machine without a hypervisor, so tests can run the real daemon and the stock xenstore-* clients.
 *
 * Since 4.17 the node database is only created when dom0 is introduced, which needs the Xen
 * control, grant-table and event-channel handles.  Everything here pretends those succeed:
 * - libxenctrl: a dummy handle; every asked-for domain exists and is alive.
 * - libxengnttab: grant "mappings" are anonymous shared pages.
 * - libxenevtchn: the handle's fd is an eventfd that never fires; ports are made up.
 * - open(): /proc/xen/xsd_port reads as empty (/dev/null) and /proc/xen/xsd_kva maps as
 *   anonymous memory (/dev/zero), so dom0's ring page is a private page nobody else uses.
 * The socket protocol, store, permissions, watches and transactions stay the real daemon's.
 *
 * Unversioned definitions here satisfy the daemon's versioned references (VERS_4.17.0, VERS_1.x);
 * the real libraries must still be installed for the dynamic loader.
 *
 * Build: gcc -shared -fPIC -O2 -o xs-shim.so tests/xs-shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

/* ---- open(): redirect the two /proc/xen files xenstored reads for dom0 ---- */

static const char *redirect(const char *path) {
  if (path && strcmp(path, "/proc/xen/xsd_port") == 0) return "/dev/null";
  if (path && strcmp(path, "/proc/xen/xsd_kva") == 0) return "/dev/zero";
  return path;
}

typedef int (*open_fn)(const char *, int, ...);

int open(const char *path, int flags, ...) {
  static open_fn real_open;
  mode_t mode = 0;
  if (flags & (O_CREAT | O_TMPFILE)) {
    va_list ap;
    va_start(ap, flags);
    mode = (mode_t)va_arg(ap, int);
    va_end(ap);
  }
  if (!real_open) real_open = (open_fn)dlsym(RTLD_NEXT, "open");
  return real_open(redirect(path), flags, mode);
}

int open64(const char *path, int flags, ...) {
  static open_fn real_open64;
  mode_t mode = 0;
  if (flags & (O_CREAT | O_TMPFILE)) {
    va_list ap;
    va_start(ap, flags);
    mode = (mode_t)va_arg(ap, int);
    va_end(ap);
  }
  if (!real_open64) real_open64 = (open_fn)dlsym(RTLD_NEXT, "open64");
  return real_open64(redirect(path), flags, mode);
}

/* ---- libxenctrl ---- */

/* The leading fields of xc_dominfo_t (xenctrl.h, 4.17); the caller's struct is larger, and the
 * daemon only looks at the id and the state flags. */
struct dominfo_prefix {
  uint32_t domid;
  uint32_t ssidref;
  unsigned int dying : 1, crashed : 1, shutdown : 1, paused : 1, blocked : 1, running : 1,
      hvm : 1, debugged : 1, xenstore : 1, hap : 1;
  unsigned int shutdown_reason;
};

static int dummy_xc;

void *xc_interface_open(void *logger, void *dombuild_logger, unsigned open_flags) {
  (void)logger;
  (void)dombuild_logger;
  (void)open_flags;
  return &dummy_xc;
}

int xc_interface_close(void *xch) {
  (void)xch;
  return 0;
}

int xc_domain_getinfo(void *xch, uint32_t first_domid, unsigned int max_doms, void *info) {
  (void)xch;
  if (max_doms == 0 || info == NULL) return 0;
  struct dominfo_prefix *d = info;
  memset(d, 0, sizeof *d);
  d->domid = first_domid;
  d->running = 1;
  return 1;
}

/* ---- libxengnttab ---- */

static int dummy_gnttab;

void *xengnttab_open(void *logger, unsigned open_flags) {
  (void)logger;
  (void)open_flags;
  return &dummy_gnttab;
}

int xengnttab_close(void *xgt) {
  (void)xgt;
  return 0;
}

int xengnttab_set_max_grants(void *xgt, uint32_t nr_grants) {
  (void)xgt;
  (void)nr_grants;
  return 0;
}

void *xengnttab_map_grant_ref(void *xgt, uint32_t domid, uint32_t ref, int prot) {
  (void)xgt;
  (void)domid;
  (void)ref;
  void *p = mmap(NULL, 4096, prot ? prot : PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                 -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

int xengnttab_unmap(void *xgt, void *start_address, uint32_t count) {
  (void)xgt;
  return munmap(start_address, (size_t)count * 4096);
}

/* ---- libxenevtchn ---- */

struct evtchn {
  int fd;
};

static uint32_t next_port = 1;

static void *evtchn_new(void) {
  struct evtchn *h = malloc(sizeof *h);
  if (!h) return NULL;
  h->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (h->fd < 0) {
    free(h);
    return NULL;
  }
  return h;
}

void *xenevtchn_open(void *logger, unsigned open_flags) {
  (void)logger;
  (void)open_flags;
  return evtchn_new();
}

void *xenevtchn_fdopen(void *logger, int fd, unsigned open_flags) {
  (void)logger;
  (void)fd;
  (void)open_flags;
  return evtchn_new();
}

int xenevtchn_close(void *xce) {
  struct evtchn *h = xce;
  if (!h) return 0;
  close(h->fd);
  free(h);
  return 0;
}

int xenevtchn_fd(void *xce) {
  return ((struct evtchn *)xce)->fd;
}

int xenevtchn_bind_virq(void *xce, unsigned int virq) {
  (void)xce;
  (void)virq;
  return (int)next_port++;
}

int xenevtchn_bind_interdomain(void *xce, uint32_t domid, uint32_t remote_port) {
  (void)xce;
  (void)domid;
  (void)remote_port;
  return (int)next_port++;
}

int xenevtchn_notify(void *xce, uint32_t port) {
  (void)xce;
  (void)port;
  return 0;
}

int xenevtchn_pending(void *xce) {
  (void)xce;
  errno = EAGAIN;
  return -1;
}

int xenevtchn_unmask(void *xce, uint32_t port) {
  (void)xce;
  (void)port;
  return 0;
}

int xenevtchn_unbind(void *xce, uint32_t port) {
  (void)xce;
  (void)port;
  return 0;
}
