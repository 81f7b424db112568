/*
 * A stand-in for blktap's libvhd.so.0, for testing sparse_dd's FFI binding (src/libvhd.ts) where
 * the real library cannot be installed (it is not packaged in Debian). It implements only the
 * five calls the binding makes, with libvhd's ABI as measured on blktap v4.0.8 (see
 * /work/shared/reference/vhd.md, section 2): caller-owned opaque context, structs in the
 * on-disk layout with integers converted to host order, a malloc'd BAT freed by the caller, and
 * libvhd's quirks that matter here: the BAT is sized for 2 MiB blocks whatever the header says,
 * and block sizes above 2 MiB are refused with -EINVAL.
 *
 * It is NOT libvhd: the cross-check against the real library is a separate test, reported as
 * ignored when libvhd.so.0 cannot be loaded.
 *
 * Build: gcc -shared -fPIC -O2 -o libvhd-standin.so fake-libvhd.c
 */
#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct ctx {
	int fd;
	off_t size;
	uint32_t type;
	uint64_t data_offset;
	uint64_t curr_size;
	uint32_t block_size;
};

struct bat {
	uint32_t spb;
	uint32_t entries;
	uint32_t *bat;
};

static uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return be64toh(v); }
static uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return be32toh(v); }
static void host32(unsigned char *p) { uint32_t v = get32(p); memcpy(p, &v, 4); }
static void host64(unsigned char *p) { uint64_t v = get64(p); memcpy(p, &v, 8); }

static int read_at(int fd, void *buf, size_t len, off_t off)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, off + done);
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
		done += n;
	}
	return 0;
}

static int raw_footer(struct ctx *c, unsigned char *f, bool backup)
{
	int err = read_at(c->fd, f, 512, backup ? 0 : c->size - 512);
	if (err)
		return err;
	return memcmp(f, "conectix", 8) ? -EINVAL : 0;
}

int vhd_open(void *opaque, const char *file, int flags)
{
	struct ctx *c = opaque;
	unsigned char f[512], h[1024];
	struct stat st;
	(void)flags;
	memset(c, 0, sizeof(*c));
	c->fd = open(file, O_RDONLY);
	if (c->fd < 0)
		return -errno;
	if (fstat(c->fd, &st) || st.st_size < 512) {
		close(c->fd);
		return -EINVAL;
	}
	c->size = st.st_size;
	if (raw_footer(c, f, false) && raw_footer(c, f, true)) {
		close(c->fd);
		return -EINVAL;
	}
	c->type = get32(f + 60);
	c->data_offset = get64(f + 16);
	c->curr_size = get64(f + 48);
	if (c->type != 2) {
		if (read_at(c->fd, h, 1024, c->data_offset) || memcmp(h, "cxsparse", 8)) {
			close(c->fd);
			return -EINVAL;
		}
		c->block_size = get32(h + 32);
		if (c->block_size > (2u << 20)) { /* vhd_validate_header's limit */
			close(c->fd);
			return -EINVAL;
		}
	}
	return 0;
}

void vhd_close(void *opaque)
{
	struct ctx *c = opaque;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

int vhd_read_footer(void *opaque, unsigned char *f, bool use_bkp_footer)
{
	struct ctx *c = opaque;
	int err = raw_footer(c, f, use_bkp_footer);
	if (err)
		return err;
	for (int off = 8; off <= 64; off += 4)
		if (off != 16 && off != 20 && off != 28 && off != 40 && off != 44 && off != 48 &&
		    off != 52)
			host32(f + off);
	host64(f + 16);
	host64(f + 40);
	host64(f + 48);
	return 0;
}

int vhd_read_header(void *opaque, unsigned char *h)
{
	struct ctx *c = opaque;
	if (c->type == 2)
		return -EINVAL;
	int err = read_at(c->fd, h, 1024, c->data_offset);
	if (err)
		return err;
	host64(h + 8);
	host64(h + 16);
	host32(h + 24);
	host32(h + 28);
	host32(h + 32);
	host32(h + 36);
	host32(h + 56);
	for (int i = 0; i < 8; i++) {
		unsigned char *l = h + 576 + 24 * i;
		host32(l);
		host32(l + 4);
		host32(l + 8);
		host64(l + 16);
	}
	return 0;
}

int vhd_read_bat(void *opaque, struct bat *bat)
{
	struct ctx *c = opaque;
	unsigned char h[1024];
	if (c->type == 2)
		return -EINVAL;
	int err = read_at(c->fd, h, 1024, c->data_offset);
	if (err)
		return err;
	uint64_t table = get64(h + 16);
	/* libvhd sizes the BAT for 2 MiB blocks, whatever the header says. */
	uint32_t entries = (uint32_t)((c->curr_size + (2u << 20) - 1) >> 21);
	uint32_t *b = malloc((size_t)entries * 4 + 4);
	if (!b)
		return -ENOMEM;
	err = read_at(c->fd, b, (size_t)entries * 4, table);
	if (err) {
		free(b);
		return err;
	}
	for (uint32_t i = 0; i < entries; i++)
		b[i] = be32toh(b[i]);
	bat->spb = c->block_size >> 9;
	bat->entries = entries;
	bat->bat = b;
	return 0;
}
