/* CRC32c (Castagnoli, reflected polynomial 0x82F63B78), the SCTP checksum (RFC 9260 appendix A).
 * Table-driven; the table is filled once at module import (fp_crc32c_init). */
#ifndef FASTPATH_CRC32C_H
#define FASTPATH_CRC32C_H

#include <stddef.h>
#include <stdint.h>

static uint32_t fp_crc32c_table[256];

static void fp_crc32c_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t crc = i;
        for (int bit = 0; bit < 8; bit++)
            crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
        fp_crc32c_table[i] = crc;
    }
}

/* CRC32c of data, with the 4 bytes at skip (the checksum field) read as zeros. */
static inline uint32_t fp_crc32c_skipping(const uint8_t *data, size_t length, size_t skip)
{
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < length; i++) {
        uint8_t byte = (i - skip < 4) ? 0 : data[i];
        crc = (crc >> 8) ^ fp_crc32c_table[(crc ^ byte) & 0xFF];
    }
    return ~crc;
}

#endif
