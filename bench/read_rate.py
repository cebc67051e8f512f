# How fast this machine reads a file (from the page cache when it is cached) with N threads of
# pread into ordinary memory: the ceiling for tpx's loader, which reads the same way into
# pinned memory. Usage: python3 bench/read_rate.py FILE [THREADS...]
import os, sys, threading, time

path = sys.argv[1]
size = os.path.getsize(path)
chunk = 8 << 20
for threads in [int(t) for t in sys.argv[2:]] or [1, 4, 16]:
    fd = os.open(path, os.O_RDONLY)
    next_offset = [0]
    lock = threading.Lock()
    def work():
        buf = bytearray(chunk)
        view = memoryview(buf)
        while True:
            with lock:
                off = next_offset[0]
                next_offset[0] += chunk
            if off >= size:
                return
            os.preadv(fd, [view[: min(chunk, size - off)]], off)
    t = time.perf_counter()
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for p in pool: p.start()
    for p in pool: p.join()
    dt = time.perf_counter() - t
    os.close(fd)
    print(f"RESULT read_threads={threads} GBps={size / dt / 1e9:.2f} seconds={dt:.2f}")
