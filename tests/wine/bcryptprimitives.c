/* Wine 8 (Debian 12's) lacks bcryptprimitives.dll, whose ProcessPrng Rust's standard
 * library takes its randomness from on Windows 10 and later, where the system has it.
 * The tests put this one in their Wine prefixes only (tests/wine/run.sh, the e2e tests):
 * it draws from RtlGenRandom, which Wine has. */
#include <windows.h>
#include <ntsecapi.h>

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
