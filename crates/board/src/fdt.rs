//! The device tree: describes exactly the board that exists (harts, RAM, CLINT, PLIC, UART, virtio slots).

use vm_fdt::{FdtWriter, FdtWriterNode};

use crate::layout;

/// What the device tree describes.
pub struct FdtConfig<'a> {
    pub harts: usize,
    pub ram_base: u64,
    pub ram_size: u64,
    pub bootargs: &'a str,
    /// Guest-physical start and end of the initrd.
    pub initrd: Option<(u64, u64)>,
    /// (MMIO base, PLIC source) of each virtio-mmio device.
    pub virtio: &'a [(u64, u32)],
}

const PLIC_PHANDLE: u32 = 1;
/// Phandle of hart `h`'s interrupt controller.
fn intc_phandle(h: usize) -> u32 {
    2 + h as u32
}

pub fn build(cfg: &FdtConfig) -> Result<Vec<u8>, vm_fdt::Error> {
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_string("compatible", "riscv-virtio")?;
    w.property_string("model", "kemari,rv64")?;

    let chosen = w.begin_node("chosen")?;
    w.property_string("bootargs", cfg.bootargs)?;
    w.property_string("stdout-path", &format!("/soc/serial@{:x}", layout::UART_BASE))?;
    if let Some((start, end)) = cfg.initrd {
        w.property_u64("linux,initrd-start", start)?;
        w.property_u64("linux,initrd-end", end)?;
    }
    w.end_node(chosen)?;

    let mem = w.begin_node(&format!("memory@{:x}", cfg.ram_base))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &[cfg.ram_base, cfg.ram_size])?;
    w.end_node(mem)?;

    cpus(&mut w, cfg.harts)?;

    let soc = w.begin_node("soc")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_string("compatible", "simple-bus")?;
    w.property_null("ranges")?;

    let clint = w.begin_node(&format!("clint@{:x}", crate::clint::BASE))?;
    w.property_string_list("compatible", vec!["sifive,clint0".into(), "riscv,clint0".into()])?;
    w.property_array_u64("reg", &[crate::clint::BASE, crate::clint::SIZE])?;
    let cells: Vec<u32> = (0..cfg.harts).flat_map(|h| [intc_phandle(h), 3, intc_phandle(h), 7]).collect();
    w.property_array_u32("interrupts-extended", &cells)?;
    w.end_node(clint)?;

    let plic = w.begin_node(&format!("plic@{:x}", crate::plic::BASE))?;
    w.property_string_list("compatible", vec!["sifive,plic-1.0.0".into(), "riscv,plic0".into()])?;
    w.property_array_u64("reg", &[crate::plic::BASE, crate::plic::SIZE])?;
    w.property_u32("#address-cells", 0)?;
    w.property_u32("#interrupt-cells", 1)?;
    w.property_null("interrupt-controller")?;
    w.property_u32("riscv,ndev", crate::plic::NUM_SOURCES as u32 - 1)?;
    w.property_phandle(PLIC_PHANDLE)?;
    let cells: Vec<u32> = (0..cfg.harts).flat_map(|h| [intc_phandle(h), 11, intc_phandle(h), 9]).collect();
    w.property_array_u32("interrupts-extended", &cells)?;
    w.end_node(plic)?;

    let test = w.begin_node(&format!("test@{:x}", layout::TEST_BASE))?;
    w.property_string_list("compatible", vec!["sifive,test1".into(), "sifive,test0".into(), "syscon".into()])?;
    w.property_array_u64("reg", &[layout::TEST_BASE, layout::TEST_SIZE])?;
    w.end_node(test)?;

    let uart = w.begin_node(&format!("serial@{:x}", layout::UART_BASE))?;
    w.property_string("compatible", "ns16550a")?;
    w.property_array_u64("reg", &[layout::UART_BASE, layout::UART_SIZE])?;
    w.property_u32("clock-frequency", 3_686_400)?;
    w.property_u32("interrupt-parent", PLIC_PHANDLE)?;
    w.property_u32("interrupts", layout::UART_IRQ)?;
    w.end_node(uart)?;

    for &(base, irq) in cfg.virtio {
        let n = w.begin_node(&format!("virtio_mmio@{base:x}"))?;
        w.property_string("compatible", "virtio,mmio")?;
        w.property_array_u64("reg", &[base, layout::VIRTIO_SIZE])?;
        w.property_u32("interrupt-parent", PLIC_PHANDLE)?;
        w.property_u32("interrupts", irq)?;
        w.end_node(n)?;
    }
    w.end_node(soc)?;
    w.end_node(root)?;
    w.finish()
}

fn cpus(w: &mut FdtWriter, harts: usize) -> Result<(), vm_fdt::Error> {
    let cpus = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 1)?;
    w.property_u32("#size-cells", 0)?;
    w.property_u32("timebase-frequency", layout::TIMEBASE_HZ as u32)?;
    for h in 0..harts {
        let cpu: FdtWriterNode = w.begin_node(&format!("cpu@{h}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_u32("reg", h as u32)?;
        w.property_string("status", "okay")?;
        w.property_string("compatible", "riscv")?;
        w.property_string("riscv,isa", "rv64imafdc_zicsr_zifencei")?;
        w.property_string("mmu-type", "riscv,sv48")?;
        let intc = w.begin_node("interrupt-controller")?;
        w.property_u32("#interrupt-cells", 1)?;
        w.property_null("interrupt-controller")?;
        w.property_string("compatible", "riscv,cpu-intc")?;
        w.property_phandle(intc_phandle(h))?;
        w.end_node(intc)?;
        w.end_node(cpu)?;
    }
    w.end_node(cpus)
}
